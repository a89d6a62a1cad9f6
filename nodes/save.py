"""LongLive Save Video: the sampler's video as H.264 MP4 in ComfyUI's output folder, written while it generates.

The sampler reads this node's inputs from the queued graph and encodes each decoded block into the file at once
(nodes/outputs.py, nodes/recording.py); when this node runs, the file is complete and it only shows it.
"""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..longlive_core import ConfigError
from .outputs import PER_RUN, SAVE_MODES

FilesType = io.Custom("LONGLIVE_VIDEO_FILES")


class SaveVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongLive_SaveVideo", display_name="LongLive Save Video", category="LongLive",
            description="Saves the sampler's video as an MP4 (H.264) in ComfyUI's output folder. The sampler writes "
                        "each block into the file as soon as it is decoded: the file is ready when the run ends and "
                        "playable while it runs. Needs a VAE on the sampler.",
            inputs=[FilesType.Input("video", tooltip="The sampler's video output"),
                    io.String.Input("filename_prefix", default="longlive/video",
                                    tooltip="Folder and name in the output folder, as SaveVideo's"),
                    io.Combo.Input("mode", options=list(SAVE_MODES), default=PER_RUN,
                                   tooltip="one file per run, or (with a session id) one file for the whole session "
                                           "that each run appends to (finished when the session is reset or freed; "
                                           "between runs it holds all but the last frame)")],
            outputs=[], is_output_node=True, hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, video: dict, filename_prefix: str, mode: str = PER_RUN) -> io.NodeOutput:
        files = video.get(str(cls.hidden.unique_id)) if cls.hidden else None
        if not files:
            raise ConfigError("LongLive Save Video got no file: connect its video input straight to a LongLive "
                              "Streaming Sampler's video output, and a VAE to the sampler (the sampler writes the file)")
        return io.NodeOutput(ui=ui.PreviewVideo([ui.SavedResult(f.filename, f.subfolder, io.FolderType.output)
                                                 for f in files]))
