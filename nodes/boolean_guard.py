"""Refuses a string where one of the pack's BOOLEAN inputs is due in a queued API graph.

ComfyUI 0.3.75 validates a BOOLEAN input with `bool(value)`, so `"reset": "false"` in an API graph reads as True and
starts the video over. ComfyUI hands every queued graph to the server's prompt handlers before it validates it: the
handler here wraps such a string in `StringBoolean`, whose truth value raises, and ComfyUI's own validation then
refuses the graph (HTTP 400, `node_errors` naming the node and the input) with the message below.
"""

from __future__ import annotations


class StringBoolean(str):
    """A string sent for a boolean input. It serializes as the string it was; asking for its truth value raises."""

    input_name: str

    def __new__(cls, value: str, input_name: str) -> StringBoolean:
        string = super().__new__(cls, value)
        string.input_name = input_name
        return string

    def __bool__(self) -> bool:
        raise TypeError(f"{self.input_name}: got the string {str(self)!r} where a boolean is due; send true or "
                        f"false without quotes")


def boolean_inputs(node_classes) -> dict[str, tuple[str, ...]]:
    """node id -> the names of its BOOLEAN inputs, from the V3 schemas."""
    found = {}
    for cls in node_classes:
        schema = cls.GET_SCHEMA()
        names = tuple(i.id for i in schema.inputs if i.get_io_type() == "BOOLEAN")
        if names:
            found[schema.node_id] = names
    return found


def prompt_handler(node_classes):
    """The handler for `PromptServer.add_on_prompt_handler`: marks the strings in the pack's boolean inputs."""
    guarded = boolean_inputs(node_classes)

    def mark_string_booleans(json_data: dict) -> dict:
        graph = json_data.get("prompt") if isinstance(json_data, dict) else None
        for node in graph.values() if isinstance(graph, dict) else ():
            inputs = node.get("inputs") if isinstance(node, dict) else None
            if not isinstance(inputs, dict):
                continue
            for name in guarded.get(node.get("class_type"), ()):
                if isinstance(inputs.get(name), str):
                    inputs[name] = StringBoolean(inputs[name], name)
        return json_data

    return mark_string_booleans
