// Lesson navigation (vitviz/ui/lesson/controls.py): Previous / step dots / Next, and the
// ← → keys anywhere on the page except in a text field, menu or slider. Fixed code: the step
// titles arrive as data and are only set as text.
const KEYS = new WeakMap();

function typing(target) {
  const t = target && target.closest ? target : null;
  if (!t) return false;
  const tag = (t.tagName || "").toLowerCase();
  return tag === "input" || tag === "textarea" || tag === "select" || t.isContentEditable ||
    !!t.closest("[role=slider],[role=listbox],[role=combobox],[contenteditable=true]");
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const step = data.step, count = data.count;
  let at = step;  // where the last move went: quick presses count from there, not from `step`
  const go = (n) => {
    if (n < 0 || n >= count || n === at) return;
    at = n;
    root.setAttribute("data-going", String(n));
    setTriggerValue("go", n);
  };
  // Streamlit's <style> lives in parentElement too: only our own element is replaced
  const old_root = parentElement.querySelector("nav.vv-nav");
  const root = el("nav", { class: "vv-nav", "data-step": String(step), "data-count": String(count) });
  if (old_root) old_root.replaceWith(root); else parentElement.appendChild(root);
  const prev = el("button", { "data-role": "prev", text: "← " + data.prev }, root);
  prev.disabled = step === 0;
  prev.addEventListener("click", () => go(at - 1));
  const dots = el("div", { class: "dots" }, root);
  for (let i = 0; i < count; i++) {
    const b = el("button", { "data-go": String(i), title: data.titles[i], text: String(i + 1) }, dots);
    if (i === step) b.classList.add("on");
    b.addEventListener("click", () => go(i));
  }
  const next = el("button", { "data-role": "next", text: data.next + " →" }, root);
  next.disabled = step === count - 1;
  next.addEventListener("click", () => go(at + 1));
  const onKey = (e) => {
    if (e.defaultPrevented || e.altKey || e.ctrlKey || e.metaKey || typing(e.target)) return;
    const path = e.composedPath ? e.composedPath() : [];
    if (path.some((t) => t !== e.target && typing(t))) return;
    if (e.key === "ArrowRight" || e.key === "PageDown") { e.preventDefault(); go(at + 1); }
    else if (e.key === "ArrowLeft" || e.key === "PageUp") { e.preventDefault(); go(at - 1); }
  };
  const old = KEYS.get(parentElement);
  if (old) document.removeEventListener("keydown", old);
  KEYS.set(parentElement, onKey);
  document.addEventListener("keydown", onKey);
  root.setAttribute("data-ready", "1");
  return () => {
    document.removeEventListener("keydown", onKey);
    if (KEYS.get(parentElement) === onKey) KEYS.delete(parentElement);
  };
}
