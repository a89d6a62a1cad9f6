// LongLive panel: the session's video played as it is made (every frame, at the video's rate, from the WebSocket
// /longlive/sessions/{id}/frames), a prompt box (Enter switches at the next block; what is typed is sent ahead, to
// be encoded before Enter), stop, stats and a timeline of the switch points of the session that is generating. Runs
// without a session id show ComfyUI's block previews.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const state = { session: "", frames: 0, switches: [], previews: 0, metadata: false, player: null };
const PREBUFFER = 2; // frames waited for before playing (network jitter), at most as many frame times
const MAX_BUFFER = 24; // more waiting than this: play the newest (the viewer fell behind)
const TYPED_PAUSE_MS = 150; // a pause in typing this long sends the text, to be encoded before Enter posts it

function el(tag, attrs = {}, children = []) {
  const node = Object.assign(document.createElement(tag), attrs);
  node.append(...children);
  return node;
}

function buildPanel() {
  const preview = el("img", { id: "longlive-preview", alt: "LongLive preview" });
  const screen = el("canvas", { id: "longlive-screen" });
  const playback = el("div", { id: "longlive-playback", textContent: "" });
  const prompt = el("input", { id: "longlive-prompt", type: "text", placeholder: "New prompt, Enter to switch" });
  const blend = el("input", { id: "longlive-blend", type: "number", min: 1, max: 64, value: 1,
    title: "blend into the new prompt over this many blocks (1: switch at once)" });
  const stop = el("button", { id: "longlive-stop", textContent: "Stop" });
  const stats = el("div", { id: "longlive-stats", textContent: "no live session" });
  const timeline = el("div", { id: "longlive-timeline" });
  const message = el("div", { id: "longlive-message" });
  const panel = el("div", { id: "longlive-panel" }, [
    el("div", { className: "longlive-title", textContent: "LongLive" }), screen, preview, playback, prompt,
    el("label", { textContent: "blend over blocks " }, [blend]), stop, stats, timeline, message,
  ]);
  Object.assign(panel.style, {
    position: "fixed", right: "12px", bottom: "12px", width: "320px", zIndex: 1000, padding: "8px",
    background: "var(--comfy-menu-bg, #222)", color: "var(--fg-color, #ddd)", border: "1px solid #555",
    borderRadius: "6px", font: "12px sans-serif", display: "flex", flexDirection: "column", gap: "4px",
  });
  Object.assign(preview.style, { width: "100%", minHeight: "40px", background: "#000", imageRendering: "pixelated" });
  Object.assign(screen.style, { width: "100%", background: "#000", display: "none" });
  Object.assign(timeline.style, { position: "relative", height: "10px", background: "#444", borderRadius: "3px" });
  let typing = null;
  prompt.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => typed(prompt.value.trim()), TYPED_PAUSE_MS);
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && prompt.value.trim()) {
      const blocks = Math.max(1, Math.min(64, Number(blend.value) || 1));
      send("prompt", { text: prompt.value.trim(), blend_blocks: blocks, blend: "slerp" })
        .then((ok) => ok && (prompt.value = ""));
    }
  });
  stop.addEventListener("click", () => send("stop", {}));
  document.body.append(panel);
  return { panel, preview, screen, playback, stats, timeline, message };
}

function post(action, body) {
  return api.fetchApi(`/longlive/sessions/${encodeURIComponent(state.session)}/${action}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
}

// the text so far, while a live session runs: it encodes it while it waits (once a text), and Enter switches sooner
function typed(text) {
  if (state.session && text) post("typed", { text }).catch(() => {}); // a head start only: Enter posts it anyway
}

async function send(action, body) {
  const ui = state.ui;
  if (!state.session) {
    ui.message.textContent = "no session is generating live";
    return false;
  }
  const response = await post(action, body);
  const answer = await response.json();
  ui.message.textContent = response.ok ? `${action}: frame ${answer.at_frame}` : answer.error;
  return response.ok;
}

function drawTimeline() {
  const { timeline } = state.ui;
  timeline.replaceChildren(...state.switches.map((s) => {
    const tick = el("div", { className: "longlive-switch", title: `${s.frame}: ${s.text}` });
    const left = state.frames ? (100 * s.frame) / state.frames : 0;
    Object.assign(tick.style, { position: "absolute", left: `${left}%`, width: "2px", height: "100%", background: "#4af" });
    tick.dataset.frame = s.frame;
    return tick;
  }));
}

async function refreshSwitches() {
  const response = await api.fetchApi("/longlive/sessions");
  const sessions = (await response.json()).sessions || {};
  state.switches = sessions[state.session]?.switches || [];
  drawTimeline();
}

// --- the stream player ---------------------------------------------------------------------------------------

class Player {
  constructor(session) {
    this.session = session;
    this.buffer = [];
    this.received = [];  // arrival times of the last frames (delivered fps)
    this.count = 0;
    this.lastFrame = -1;
    this.order = "ok";
    this.latency = null;
    this.dropped = 0;
    this.playing = false;
    const url = new URL(api.apiURL(`/longlive/sessions/${encodeURIComponent(session)}/frames`), window.location.href);
    url.protocol = url.protocol.replace("http", "ws");
    this.ws = new WebSocket(url.href);
    this.ws.binaryType = "arraybuffer";
    this.chain = Promise.resolve(); // frames are decoded one after another: they stay in order
    this.ws.onmessage = (event) => {
      if (typeof event.data === "string") this.pace(JSON.parse(event.data).fps); // the hello: the video's frame rate
      else this.chain = this.chain.then(() => this.arrive(event.data));
    };
    this.pace(16);
  }

  // plays a frame every 1/fps seconds: the video's rate (LongLive 1.x 16 fps, 2.0 24 fps)
  pace(fps) {
    if (!fps || fps === this.fps) return;
    this.fps = fps;
    clearInterval(this.timer);
    this.timer = setInterval(() => this.tick(), 1000 / fps);
  }

  async arrive(data) {
    const length = new DataView(data).getUint32(0);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(data, 4, length)));
    this.pace(header.fps);
    const image = await createImageBitmap(new Blob([new Uint8Array(data, 4 + length)], { type: "image/jpeg" }));
    const now = performance.now();
    const expected = this.count === 0 || header.frame === 0 || header.frame === this.lastFrame + 1;
    if (!expected && this.order === "ok" && header.dropped === this.dropped) {
      this.order = `gap before frame ${header.frame}`; // frames the server dropped for this tab are not a gap
    }
    this.lastFrame = header.frame;
    this.dropped = header.dropped;
    this.count += 1;
    this.received.push(now);
    while (this.received.length && this.received[0] < now - 2000) this.received.shift();
    if (header.posted_at) { // a new prompt's first frame: show it next (the frames before it are in the file)
      for (const old of this.buffer.splice(0)) old.image.close();
    }
    this.buffer.push({ header, image, arrived: now });
    const shown = state.ui.panel.dataset;
    shown.streamFrames = this.count;
    shown.streamOrder = this.order;
    shown.streamLast = header.frame;
  }

  // a frame that waited PREBUFFER frame times plays though fewer wait: a run's last frame is not held back
  tick() {
    const oldest = this.buffer[0];
    const waited = oldest && performance.now() - oldest.arrived >= (PREBUFFER * 1000) / this.fps;
    if (!this.playing && this.buffer.length < PREBUFFER && !waited) return;
    this.playing = this.buffer.length > 0;
    if (!this.playing) return;
    while (this.buffer.length > MAX_BUFFER) this.buffer.shift().image.close();
    const { header, image } = this.buffer.shift();
    const { screen, preview } = state.ui;
    screen.width = image.width;
    screen.height = image.height;
    screen.getContext("2d").drawImage(image, 0, 0);
    image.close();
    screen.style.display = "block";
    preview.style.display = "none";
    if (header.posted_at) this.latency = Date.now() / 1000 - header.posted_at;
    const fps = this.received.length / 2;
    state.ui.playback.textContent = `playing frame ${header.frame}: ${fps.toFixed(1)} fps delivered, buffer ` +
      `${this.buffer.length}` + (this.latency !== null ? `, prompt to pixel ${Math.round(this.latency * 1000)} ms` : "") +
      (this.dropped ? `, ${this.dropped} dropped (slow connection)` : "");
    state.ui.panel.dataset.streamShown = header.frame;
  }

  close() {
    clearInterval(this.timer);
    this.ws.close();
  }
}

function watch(session) {
  const open = state.player && state.player.ws.readyState <= WebSocket.OPEN; // connecting or open
  if (!session || (open && state.player.session === session)) return; // a closed socket (server restart): again
  state.player?.close();
  state.player = new Player(session);
}

// a queued graph with a LongLive sampler: watch its session before its first frame
function onExecutionStart() {
  const sampler = app.graph?._nodes?.find((n) => n.type === "LongLive_StreamingSampler");
  const session = sampler?.widgets?.find((w) => w.name === "session_id")?.value;
  if (session) watch(String(session));
}

function onBlock(event) {
  const d = event.detail;
  watch(d.session);
  const newVideo = (d.session && d.session !== state.session) || d.frame < state.frames;
  state.session = d.session || state.session;
  state.frames = d.frame;
  if (newVideo) state.switches = [];
  const sw = d.last_switch_ms ? `, switch ${d.last_switch_ms} ms` : "";
  const decode = d.last_decode_ms ? `, decode ${d.last_decode_ms} ms` : "";  // the last decode (GPU time on CUDA)
  state.ui.stats.textContent = `${state.session}${d.live ? " (live)" : ""}: frame ${d.frame} (${d.video_time}), ` +
    `${d.last_block_ms} ms/block (${d.fps} fps made)${decode}${sw}`;
  state.ui.panel.dataset.frames = d.frame;
  if (d.switched) refreshSwitches();
  else drawTimeline();
}

// The frontend sends each preview twice: with metadata (which node), then as a bare blob. Use the first
// kind when it exists, so that previews of other nodes stay out and each block counts once.
function isLongLive(detail) {
  const id = String(detail.displayNodeId ?? detail.nodeId ?? "");
  if (!id || id.includes(":")) return true; // inside a subgraph: no cheap way to tell, show it
  return app.graph?.getNodeById(Number(id))?.type === "LongLive_StreamingSampler";
}

function onPreviewWithMetadata(event) {
  state.metadata = true;
  if (event.detail?.blob instanceof Blob && isLongLive(event.detail)) show(event.detail.blob);
}

function onPreview(event) {
  if (!state.metadata && event.detail instanceof Blob) show(event.detail);
}

function show(blob) {
  const { preview, panel } = state.ui;
  if (state.player?.playing) return; // the stream shows every frame
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  panel.dataset.previews = ++state.previews;
}

app.registerExtension({
  name: "longlive.panel",
  setup() {
    state.ui = buildPanel();
    api.addEventListener("longlive.block", onBlock);
    api.addEventListener("execution_start", onExecutionStart);
    api.addEventListener("b_preview", onPreview);
    api.addEventListener("b_preview_with_metadata", onPreviewWithMetadata);
  },
});
