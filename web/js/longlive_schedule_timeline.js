// A timeline under the LongLive Prompt Schedule node: one bar per prompt, from its start to the next,
// in seconds of video (16 fps), starts rounded to blocks of 3 latent frames as the sampler does.
import { app } from "../../../scripts/app.js";

const FPS = 16;
const BLOCK = 3;
const HEIGHT = 26;
const COLORS = ["#3b7dd8", "#d8893b", "#4caf50", "#b34fc2", "#c2b34f", "#4fc2c2"];

// mirrors longlive_core/runtime/prompt_text.py: "10s:" or "10:" seconds, "frame 42:" / "f42:" latent frames
export function parseSchedule(text) {
  const segments = [];
  for (const line of text.split("\n")) {
    const m = line.match(/^\s*(?:(?:frame\s*|f)(\d+)|(\d+(?:\.\d+)?)\s*s?)\s*:\s*(.*\S)\s*$/i);
    if (!m) continue;
    const latent = m[1] !== undefined ? Number(m[1]) : Math.floor((Math.round(Number(m[2]) * FPS) + 3) / 4);
    segments.push({ start: BLOCK * Math.round(latent / BLOCK), text: m[3] });
  }
  return segments;
}

function draw(node, ctx) {
  const widget = node.widgets?.find((w) => w.name === "schedule");
  const segments = parseSchedule(widget?.value || "");
  node.longliveSegments = segments;
  if (!segments.length) return;
  const last = segments[segments.length - 1].start;
  const end = Math.max(last + 4 * BLOCK, Math.ceil(last * 1.15));
  const [w, h] = node.size;
  const y = h - HEIGHT + 4;
  segments.forEach((s, i) => {
    const x0 = 8 + ((w - 16) * s.start) / end;
    const x1 = 8 + ((w - 16) * (segments[i + 1]?.start ?? end)) / end;
    ctx.fillStyle = COLORS[i % COLORS.length];
    ctx.fillRect(x0, y, Math.max(1, x1 - x0 - 1), 10);
    ctx.fillStyle = "#ccc";
    ctx.font = "10px sans-serif";
    ctx.fillText(`${(s.start / 4).toFixed(1)}s`, x0, y + 20);
  });
}

app.registerExtension({
  name: "longlive.scheduleTimeline",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "LongLive_PromptSchedule") return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      this.setSize([this.size[0], this.size[1] + HEIGHT]);
      return result;
    };
    const drawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = drawForeground?.apply(this, arguments);
      if (!this.flags?.collapsed) draw(this, ctx);
      return result;
    };
  },
});
