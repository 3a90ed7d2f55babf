// The attention canvas (vitviz/ui/canvas.py): fixed code; data is only drawn or set as text.
const STORE = new WeakMap();
const DISPLAY_KEY = "vitviz-display";
const FUSIONS = ["mean", "max", "min"];
// The last selection made in the browser, until the page's data shows it (the report waits for
// the person to pause, and a report sent by a canvas that a view switch removes is lost): a
// canvas drawn anew takes it over and reports it again. On `window`, as each mount may load
// this module anew.
const pending = () => window.__vitvizPending || null;
const setPending = (p) => { window.__vitvizPending = p; };

function bytesOf(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
function floatsOf(b64) { return new Float32Array(bytesOf(b64).buffer); }
// the page's words (canvas.py's ``text``), "{name}" filled in from vals
function tr(data, key, vals) {
  let s = (data.text && data.text[key]) || key;
  for (const [k, v] of Object.entries(vals || {})) s = s.split("{" + k + "}").join(String(v));
  return s;
}
function fmt(v) {
  if (!isFinite(v)) return "not computed";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(3) : v.toPrecision(4);
}
function readDisplay(defaults, colormaps) {
  let stored = {};
  try { stored = JSON.parse(localStorage.getItem(DISPLAY_KEY) || "{}") || {}; } catch (e) {}
  const out = Object.assign({}, defaults);  // only valid stored values replace the defaults
  if (colormaps.includes(stored.colormap)) out.colormap = stored.colormap;
  const alpha = Number(stored.alpha);
  if (typeof stored.alpha === "number" && alpha >= 0 && alpha <= 1) out.alpha = alpha;
  for (const k of ["smooth", "grid"]) if (typeof stored[k] === "boolean") out[k] = stored[k];
  return out;
}
function writeDisplay(display) {
  try { localStorage.setItem(DISPLAY_KEY, JSON.stringify(display)); } catch (e) {}
  window.dispatchEvent(new CustomEvent(DISPLAY_KEY, { detail: display }));
}

class Canvas {
  constructor(parent) {
    this.parent = parent;
    this.root = el("div", { class: "vv", "data-ready": "0" }, parent);
    this.bar = el("div", { class: "bar" }, this.root);
    this.body = el("div", { class: "body" }, this.root);
    this.main = el("div", { class: "main" }, this.body);
    this.title = el("div", { class: "title" }, this.main);
    this.stage = el("div", { class: "stage" }, this.main);
    this.map = el("canvas", { "data-role": "map" }, this.stage);
    this.tip = el("div", { class: "tip" }, this.stage);
    this.legend = el("div", { class: "legend" }, this.main);
    this.prefix = el("div", { class: "prefix" }, this.main);
    this.displayBar = el("div", { class: "display" }, this.main);
    this.mosaic = el("div", { class: "mosaic" }, this.body);
    this.heat = document.createElement("canvas");
    this.image = new Image();
    this.sel = { layer: 0, head: -1, fusion: "mean" };
    this.pending = -1;
    this.large = false;
    this.onDisplay = (e) => { this.display = Object.assign({}, this.display, e.detail); this.syncDisplayBar(); this.draw(true); };
    window.addEventListener(DISPLAY_KEY, this.onDisplay);
    this.onLink = (e) => {
      if (!this.data || !this.data.link || e.detail.link !== this.data.link || e.detail.source === this) return;
      this.select(e.detail.sel, false);
    };
    window.addEventListener("vitviz-link", this.onLink);
    this.map.addEventListener("mousemove", (e) => this.hover(e));
    this.map.addEventListener("mouseleave", () => { this.tip.style.display = "none"; this.root.removeAttribute("data-hover"); });
    this.map.addEventListener("click", (e) => this.click(e));
    this.resize = new ResizeObserver(() => this.draw(true));
    this.resize.observe(this.root);  // the parent is a shadow root, not an element
    this.generation = 0;
  }

  destroy() {  // removed from the page: let go of everything that keeps it alive
    window.removeEventListener(DISPLAY_KEY, this.onDisplay);
    window.removeEventListener("vitviz-link", this.onLink);
    this.resize.disconnect();
    clearTimeout(this.reportTimer);  // the pending selection stays for the unreported selection for the next one
  }

  report(now) {
    clearTimeout(this.reportTimer);
    const sel = Object.assign({}, this.sel);
    setPending({ sel, L: this.L, H: this.H });
    const send = () => this.setStateValue("selection", sel);
    if (now) send(); else this.reportTimer = setTimeout(send, 600);  // once the person pauses
  }

  update(data, setStateValue, setTriggerValue) {
    this.setStateValue = setStateValue;
    this.setTriggerValue = setTriggerValue;
    this.generation++;
    const fresh = !this.data || this.data.id !== data.id;
    const first = !this.data;
    // other layer or head counts (rolled out on/off, another model): the page's selection
    const reshaped = !first && (this.L !== data.layers || this.H !== data.heads);
    this.data = data;
    this.L = data.layers; this.H = data.heads; this.slots = data.heads > 0 ? data.heads + 3 : 1;
    this.N = data.grid[0] * data.grid[1];
    this.P = data.prefix_labels ? data.prefix_labels.length : 0;
    if (fresh) {
      this.maps = floatsOf(data.maps);
      this.prefixValues = data.prefix ? floatsOf(data.prefix) : null;
      this.luts = {};
      for (const [name, b64] of Object.entries(data.luts)) this.luts[name] = bytesOf(b64);
    }
    const p = pending();
    if (data.reset) setPending(null);  // the page chose (a head clicked in the statistics)
    else if (p && p.sel.layer === data.layer && p.sel.head === data.head && p.sel.fusion === data.fusion)
      setPending(null);  // the page has it
    let adopt = false;
    if (first) {
      this.display = readDisplay(data.display, Object.keys(data.luts));
      this.sel = { layer: data.layer, head: data.head, fusion: data.fusion };
      // a selection the previous canvas had not reported yet wins over the page's older one
      adopt = !!(data.report && pending() && p.L === data.layers && p.H === data.heads);
      if (adopt) this.sel = Object.assign({}, p.sel);
    } else if (data.reset || reshaped) {
      this.sel = { layer: data.layer, head: data.head, fusion: data.fusion };
    }
    this.sel.layer = Math.min(Math.max(0, this.sel.layer), this.L - 1);
    if (this.sel.head >= this.H) this.sel.head = -1;
    this.pending = -1;
    if (adopt) this.report(true);
    this.buildBar();
    this.buildDisplayBar();
    const ready = () => { this.buildMosaic(); this.draw(true); };
    if (fresh && this.image.src !== data.image) {
      this.image.onload = ready;
      this.image.src = data.image;
    } else if (this.image.complete) {
      ready();
    }
  }

  index(sel) {
    const slot = this.H > 0 ? (sel.head >= 0 ? sel.head : this.H + FUSIONS.indexOf(sel.fusion)) : 0;
    return sel.layer * this.slots + slot;
  }
  values(sel) {
    const k = this.index(sel);
    return this.maps.subarray(k * this.N, (k + 1) * this.N);
  }

  buildBar() {
    const d = this.data;
    this.bar.replaceChildren();
    if (this.L > 1) {
      const g = el("div", { class: "group" }, this.bar);
      this.layerName = el("span", { class: "name", text: "" }, g);
      const r = el("input", { type: "range", min: "0", max: String(this.L - 1), step: "1",
                              "data-role": "layer", "aria-label": tr(d, "layer_label") }, g);
      r.value = String(this.sel.layer);
      r.addEventListener("input", () => this.select({ layer: Number(r.value) }));
      this.layerInput = r;
    }
    if (this.H > 0) {
      const g = el("div", { class: "group" }, this.bar);
      el("span", { class: "name", text: tr(d, "head_label") }, g);
      const all = el("button", { "data-head": "-1", title: tr(d, "all_title") }, g);
      all.textContent = tr(d, "all");
      all.addEventListener("click", () => this.select({ head: -1 }));
      for (let h = 0; h < this.H; h++) {
        const b = el("button", { "data-head": String(h), title: tr(d, "head_n", { head: h }) }, g);
        b.textContent = String(h);
        b.addEventListener("click", () => this.select({ head: h }));
      }
      const f = el("div", { class: "group", "data-role": "fusion" }, this.bar);
      el("span", { class: "name", text: tr(d, "fusion_label") }, f);
      for (const name of FUSIONS) {
        const b = el("button", { "data-fusion": name }, f);
        b.textContent = tr(d, "fusion_" + name);
        b.addEventListener("click", () => this.select({ fusion: name, head: -1 }));
      }
    }
    this.syncBar();
  }

  syncBar() {
    if (this.layerInput) {
      this.layerInput.value = String(this.sel.layer);
      this.layerName.textContent = tr(this.data, "layer_n", { layer: this.sel.layer });
    }
    for (const b of this.bar.querySelectorAll("button[data-head]"))
      b.classList.toggle("on", Number(b.dataset.head) === this.sel.head);
    for (const b of this.bar.querySelectorAll("button[data-fusion]"))
      b.classList.toggle("on", this.sel.head < 0 && b.dataset.fusion === this.sel.fusion);
  }

  buildDisplayBar() {
    const bar = this.displayBar, d = this.data;
    bar.replaceChildren();
    const cm = el("label", {}, bar);
    cm.append(tr(d, "colormap") + " ");
    const sel = el("select", { "data-role": "colormap", "aria-label": tr(d, "colormap") }, cm);
    for (const name of Object.keys(this.data.luts)) el("option", { value: name, text: name }, sel);
    sel.addEventListener("change", () => this.setDisplay({ colormap: sel.value }));
    const op = el("label", {}, bar);
    op.append(tr(d, "opacity") + " ");
    const a = el("input", { type: "range", min: "0", max: "1", step: "0.05", "data-role": "alpha",
                            "aria-label": tr(d, "opacity") }, op);
    a.addEventListener("input", () => this.setDisplay({ alpha: Number(a.value) }));
    for (const [key, text] of [["smooth", tr(d, "smooth")], ["grid", tr(d, "grid")]]) {
      const l = el("label", {}, bar);
      const c = el("input", { type: "checkbox", "data-role": key }, l);
      l.append(" " + text);
      c.addEventListener("change", () => this.setDisplay({ [key]: c.checked }));
    }
    const big = el("button", { "data-role": "enlarge" }, bar);
    const bigText = () => tr(d, this.large ? "smaller" : "enlarge");
    big.textContent = bigText();
    big.addEventListener("click", () => { this.large = !this.large; big.textContent = bigText(); this.draw(true); });
    const save = el("a", { href: "#", "data-role": "save" }, bar);
    save.textContent = tr(d, "save");
    save.addEventListener("click", () => {
      save.setAttribute("download", (this.data.filename || "vitviz-map") + ".png");
      save.setAttribute("href", this.map.toDataURL("image/png"));
    });
    this.syncDisplayBar();
  }

  syncDisplayBar() {
    const q = (r) => this.displayBar.querySelector(`[data-role=${r}]`);
    if (!q("colormap")) return;
    q("colormap").value = this.display.colormap;
    q("alpha").value = String(this.display.alpha);
    q("smooth").checked = !!this.display.smooth;
    q("grid").checked = !!this.display.grid;
  }

  setDisplay(change) {
    this.display = Object.assign({}, this.display, change);
    writeDisplay(this.display);  // every canvas on the page follows
  }

  select(change, broadcast = true) {
    Object.assign(this.sel, change);
    this.sel.layer = Math.min(Math.max(0, this.sel.layer), this.L - 1);
    this.syncBar();
    this.draw(false);
    if (broadcast && this.data.link)
      window.dispatchEvent(new CustomEvent("vitviz-link", { detail: { link: this.data.link, sel: Object.assign({}, this.sel), source: this } }));
    if (broadcast && this.data.report) this.report(false);  // the URL and downloads follow
  }

  size() {
    const d = this.data;
    const side = this.large ? 0 : (this.mosaicWidth || 0);  // enlarged: the mosaic wraps below
    const avail = Math.max(160, this.root.clientWidth - side - 24);
    const cap = this.large ? 720 : d.max_size;
    const w = Math.min(avail, cap);
    return [Math.round(w), Math.round(w * d.size[0] / d.size[1])];
  }

  paintHeat(values, canvas, gw, gh, fixed) {
    let lo = Infinity, hi = -Infinity;
    if (fixed) { lo = fixed[0]; hi = fixed[1]; }  // a scale shared with other canvases
    else for (const v of values) { if (isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } }
    const lut = this.luts[this.display.colormap] || Object.values(this.luts)[0];
    canvas.width = gw; canvas.height = gh;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(gw, gh);
    const span = hi > lo ? hi - lo : 1;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      const t = isFinite(v) && hi > lo ? Math.round(255 * Math.min(1, Math.max(0, (v - lo) / span))) : 0;
      img.data[4 * i] = lut[3 * t]; img.data[4 * i + 1] = lut[3 * t + 1];
      img.data[4 * i + 2] = lut[3 * t + 2]; img.data[4 * i + 3] = isFinite(v) ? 255 : 0;
    }
    ctx.putImageData(img, 0, 0);
    return [lo, hi];
  }

  compose(target, cssW, cssH, values, grid, selected, fixed) {
    const dpr = window.devicePixelRatio || 1;
    target.width = Math.round(cssW * dpr); target.height = Math.round(cssH * dpr);
    target.style.width = cssW + "px"; target.style.height = cssH + "px";
    const ctx = target.getContext("2d");
    const [gh, gw] = this.data.grid;
    const range = this.paintHeat(values, this.heat, gw, gh, fixed);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(this.image, 0, 0, target.width, target.height);
    ctx.globalAlpha = this.display.alpha;
    ctx.imageSmoothingEnabled = !!this.display.smooth;
    ctx.drawImage(this.heat, 0, 0, target.width, target.height);
    ctx.globalAlpha = 1;
    const cw = target.width / gw, ch = target.height / gh;
    if (grid) {  // at screen resolution: one crisp line per patch border
      ctx.strokeStyle = "rgba(255,255,255,0.45)"; ctx.lineWidth = 1;
      ctx.beginPath();
      for (let c = 1; c < gw; c++) { const x = Math.round(c * cw) + 0.5; ctx.moveTo(x, 0); ctx.lineTo(x, target.height); }
      for (let r = 1; r < gh; r++) { const y = Math.round(r * ch) + 0.5; ctx.moveTo(0, y); ctx.lineTo(target.width, y); }
      ctx.stroke();
    }
    if (selected >= 0) {
      const r = Math.floor(selected / gw), c = selected % gw;
      ctx.strokeStyle = "#00e5ff"; ctx.lineWidth = Math.max(2, 2 * dpr);
      ctx.strokeRect(c * cw + 1, r * ch + 1, cw - 2, ch - 2);
    }
    return range;
  }

  draw(full) {
    const d = this.data;
    if (!d || !this.image.complete || !this.image.naturalWidth) return;
    if (full && d.mosaic && this.H > 0) this.drawMosaic();
    const [w, h] = this.size();
    this.main.style.width = Math.max(w, 220) + "px";  // the legend and display bar wrap to it
    const values = this.values(this.sel);
    const selected = this.pending >= 0 ? this.pending : d.selected;
    const [lo, hi] = this.compose(this.map, w, h, values, !!this.display.grid, selected, d.scale);
    this.drawLegend(lo, hi);
    this.drawPrefix();
    this.title.textContent = this.caption();
    for (const c of this.mosaic.querySelectorAll("canvas[data-cell]"))
      c.classList.toggle("open", this.sel.head >= 0 && Number(c.dataset.cell) === this.sel.layer * this.H + this.sel.head);
    let sum = 0;
    for (const v of values) if (isFinite(v)) sum += v;
    const head = this.H > 0 ? (this.sel.head >= 0 ? String(this.sel.head) : "fused-" + this.sel.fusion) : "-";
    const r = this.root;
    r.setAttribute("data-layer", String(this.sel.layer));
    r.setAttribute("data-head", this.H > 0 ? String(this.sel.head) : "");
    r.setAttribute("data-fusion", this.sel.fusion);
    r.setAttribute("data-patch", String(d.selected));
    r.setAttribute("data-checksum", sum.toPrecision(8));
    r.setAttribute("data-min", String(lo)); r.setAttribute("data-max", String(hi));
    r.setAttribute("data-colormap", this.display.colormap);
    r.setAttribute("data-alpha", String(this.display.alpha));
    r.setAttribute("data-id", d.id);
    r.setAttribute("data-state", [d.id, this.sel.layer, head, d.selected, sum.toPrecision(8),
      this.display.colormap, this.display.alpha, this.display.smooth ? 1 : 0, this.display.grid ? 1 : 0,
      this.large ? 1 : 0].join("|"));
    r.setAttribute("data-ready", "1");
  }

  caption() {
    const d = this.data;
    const head = this.sel.head >= 0 ? tr(d, "head_n", { head: this.sel.head })
      : tr(d, "all_fused", { fusion: tr(d, "fusion_" + this.sel.fusion) });
    return d.title.replace("{layer}", String(this.sel.layer)).replace("{head}", head);
  }

  drawLegend(lo, hi) {
    const lg = this.legend;
    lg.replaceChildren();
    el("span", { text: this.data.value_name }, lg);
    el("span", { "data-role": "low", text: fmt(lo) }, lg);
    const ramp = el("canvas", { width: "256", height: "1" }, lg);
    const ctx = ramp.getContext("2d");
    const img = ctx.createImageData(256, 1);
    const lut = this.luts[this.display.colormap] || Object.values(this.luts)[0];
    for (let i = 0; i < 256; i++) {
      img.data[4 * i] = lut[3 * i]; img.data[4 * i + 1] = lut[3 * i + 1];
      img.data[4 * i + 2] = lut[3 * i + 2]; img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    el("span", { "data-role": "high", text: fmt(hi) }, lg);
  }

  drawPrefix() {
    this.prefix.replaceChildren();
    if (!this.P || !this.prefixValues) return;
    const k = this.index(this.sel);
    el("span", { text: tr(this.data, "to_extra"), style: "color: inherit; padding: 1px 0" }, this.prefix);
    for (let p = 0; p < this.P; p++) {
      const v = this.prefixValues[k * this.P + p];
      const s = el("span", { text: this.data.prefix_labels[p] + " " + fmt(v) }, this.prefix);
      s.style.background = "rgba(49,51,63," + (0.35 + 0.65 * Math.min(1, Math.max(0, v))) + ")";
    }
  }

  buildMosaic() {
    this.mosaic.replaceChildren();
    this.mosaicWidth = 0;
    const d = this.data;
    if (!d.mosaic || this.H === 0) return;
    const tile = Math.max(18, Math.min(48, Math.floor(300 / this.H)));
    this.tile = tile;
    this.mosaic.style.gridTemplateColumns = `auto repeat(${this.H}, ${tile}px)`;
    el("div", { class: "caption", text: tr(d, "mosaic") }, this.mosaic);
    el("span", { text: "" }, this.mosaic);
    for (let h = 0; h < this.H; h++) el("span", { text: "h" + h }, this.mosaic);
    for (let l = 0; l < this.L; l++) {
      el("span", { text: "L" + l }, this.mosaic);
      for (let h = 0; h < this.H; h++) {
        const c = el("canvas", { "data-cell": String(l * this.H + h), title: tr(d, "cell", { layer: l, head: h }) }, this.mosaic);
        c.addEventListener("click", () => this.select({ layer: l, head: h }));
      }
    }
    this.mosaicWidth = 28 + (tile + 2) * this.H;
    this.mosaic.style.width = this.mosaicWidth + "px";  // its caption wraps, never widens it
  }

  drawMosaic() {
    const h = Math.round(this.tile * this.data.size[0] / this.data.size[1]);
    for (const c of this.mosaic.querySelectorAll("canvas[data-cell]")) {
      const cell = Number(c.dataset.cell);
      const sel = { layer: Math.floor(cell / this.H), head: cell % this.H, fusion: "mean" };
      this.compose(c, this.tile, h, this.values(sel), false, -1);
    }
  }

  patchAt(e) {
    const rect = this.map.getBoundingClientRect();
    const [gh, gw] = this.data.grid;
    const c = Math.floor((e.clientX - rect.left) / rect.width * gw);
    const r = Math.floor((e.clientY - rect.top) / rect.height * gh);
    if (c < 0 || r < 0 || c >= gw || r >= gh) return -1;
    return r * gw + c;
  }

  hover(e) {
    const p = this.patchAt(e);
    if (p < 0) return;
    const [gh, gw] = this.data.grid;
    const v = this.values(this.sel)[p];
    const text = tr(this.data, "hover", { patch: p, row: Math.floor(p / gw), column: p % gw,
                                          what: this.data.value_name, value: fmt(v) });
    this.tip.textContent = text;
    const rect = this.map.getBoundingClientRect();
    this.tip.style.left = Math.min(e.clientX - rect.left + 12, rect.width - 150) + "px";
    this.tip.style.top = (e.clientY - rect.top + 12) + "px";
    this.tip.style.display = "block";
    this.root.setAttribute("data-hover", p + ":" + v);
  }

  click(e) {
    if (!this.data.clickable) return;
    const p = this.patchAt(e);
    if (p < 0) return;
    this.pending = p;  // outline it now; the map follows when the server answers
    this.root.setAttribute("data-pending", String(p));
    this.draw(false);
    this.setTriggerValue("patch", p);
  }
}

export default function (component) {
  const { data, parentElement, setStateValue, setTriggerValue } = component;
  let inst = STORE.get(parentElement);
  if (!inst) { inst = new Canvas(parentElement); STORE.set(parentElement, inst); }
  inst.update(data, setStateValue, setTriggerValue);
  const generation = inst.generation;
  // Called before the next data and on unmount: only a canvas gone from the page, with no
  // newer data since, is torn down.
  return () => setTimeout(() => {
    if (inst.generation === generation && !parentElement.isConnected) {
      inst.destroy();
      STORE.delete(parentElement);
    }
  }, 0);
}
