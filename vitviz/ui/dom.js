// Shared by the page's components (prepended to their code by vitviz/ui/components.py): an
// element with attributes; "text" is set as textContent, never parsed as HTML.
function el(tag, attrs, parent) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  if (parent) parent.appendChild(e);
  return e;
}
