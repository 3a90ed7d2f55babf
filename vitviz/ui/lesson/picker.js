// Patch picker for the lesson (vitviz/ui/lesson/controls.py): the model's input with its
// patch grid and numbers; a click chooses a patch. Fixed code; the image is a data URI drawn on
// a canvas, numbers are drawn as text.
const MIN_FONT = 18;

// The patch numbers' type: as large as a cell allows (up to 24 px), never under MIN_FONT; and
// the stride that keeps the widest number inside its cell (1: every patch is numbered).
function labels(ctx, sx, sy, count) {
  const px = Math.max(MIN_FONT, Math.min(24, Math.floor(Math.min(sx, sy) * 0.5)));
  const font = px + "px sans-serif";
  ctx.font = font;
  const wide = ctx.measureText(String(count - 1)).width;
  const stride = Math.max(1, Math.ceil(wide / sx), Math.ceil(px / sy));
  return { px, font, stride };
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  // Streamlit's <style> lives in parentElement too: only our own element is replaced
  const old = parentElement.querySelector("div.vv-picker");
  // a click not yet answered survives a redraw with the same patch (another rerun landing
  // between the click and its own run would otherwise drop the visitor's choice on screen)
  const carried = old && old.getAttribute("data-patch") === String(data.patch)
    ? old.getAttribute("data-pending") : null;
  const root = document.createElement("div");
  root.className = "vv-picker";
  root.setAttribute("data-patch", String(data.patch));
  if (carried !== null) root.setAttribute("data-pending", carried);
  if (old) old.replaceWith(root); else parentElement.appendChild(root);
  const canvas = document.createElement("canvas");
  const dpr = window.devicePixelRatio || 1;
  const size = data.display;  // CSS pixels of the longer side
  const [h, w] = data.size, [gh, gw] = data.grid;
  const cw = Math.round(w >= h ? size : size * w / h), ch = Math.round(h >= w ? size : size * h / w);
  canvas.style.width = cw + "px"; canvas.style.height = ch + "px";
  canvas.width = Math.round(cw * dpr); canvas.height = Math.round(ch * dpr);
  canvas.setAttribute("data-role", "picker");
  root.appendChild(canvas);
  const ctx = canvas.getContext("2d");
  const label = labels(ctx, cw / gw, ch / gh, gh * gw);
  if (data.numbers) {
    canvas.setAttribute("data-font-px", String(label.px));
    canvas.setAttribute("data-label-stride", String(label.stride));
  }
  const img = new Image();
  const draw = (chosen) => {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(img, 0, 0, cw, ch);
    const sx = cw / gw, sy = ch / gh;
    ctx.strokeStyle = "rgba(255,255,255,0.75)"; ctx.lineWidth = 1;
    ctx.beginPath();
    for (let c = 1; c < gw; c++) { const x = Math.round(c * sx) + 0.5; ctx.moveTo(x, 0); ctx.lineTo(x, ch); }
    for (let r = 1; r < gh; r++) { const y = Math.round(r * sy) + 0.5; ctx.moveTo(0, y); ctx.lineTo(cw, y); }
    ctx.stroke();
    if (data.numbers) {
      // every number at least MIN_FONT px (a projector's smallest readable type): a grid too
      // fine for every number gets one every `stride` rows and columns, each on a dark tag
      ctx.font = label.font; ctx.textAlign = "center"; ctx.textBaseline = "middle";
      for (let p = 0; p < gh * gw; p++) {
        const r = Math.floor(p / gw), c = p % gw;
        if (r % label.stride || c % label.stride) continue;
        const x = (c + 0.5) * sx, y = (r + 0.5) * sy;
        if (label.stride > 1) {
          const tw = ctx.measureText(String(p)).width + 6;
          ctx.fillStyle = "rgba(0,0,0,0.6)";
          ctx.fillRect(x - tw / 2, y - label.px / 2 - 2, tw, label.px + 4);
        } else {
          ctx.fillStyle = "rgba(0,0,0,0.55)"; ctx.fillText(String(p), x + 1, y + 1);
        }
        ctx.fillStyle = "#fff"; ctx.fillText(String(p), x, y);
      }
    }
    if (chosen >= 0) {
      const x = (chosen % gw) * sx, y = Math.floor(chosen / gw) * sy;
      ctx.strokeStyle = "#00e5ff"; ctx.lineWidth = 3;
      ctx.strokeRect(x + 1.5, y + 1.5, sx - 3, sy - 3);
    }
  };
  img.onload = () => {
    draw(carried !== null ? Number(carried) : data.patch);
    root.setAttribute("data-ready", "1");
  };
  img.src = data.image;
  canvas.addEventListener("click", (e) => {
    const rect = canvas.getBoundingClientRect();
    const c = Math.floor((e.clientX - rect.left) / rect.width * gw);
    const r = Math.floor((e.clientY - rect.top) / rect.height * gh);
    if (c < 0 || r < 0 || c >= gw || r >= gh) return;
    const p = r * gw + c;
    root.setAttribute("data-pending", String(p));
    draw(p);
    setTriggerValue("patch", p);
  });
}
