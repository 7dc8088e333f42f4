// bty-web browser UI: confirmations, live machine rows over server-sent
// events, and boot-file uploads. Everything works without it except the
// live updates and the upload, which need a browser API.
"use strict";

document.addEventListener("submit", (e) => {
  const form = e.target;
  // Destructive forms carry their question; the submitter's is more specific.
  const question = (e.submitter && e.submitter.dataset.confirm) || form.dataset.confirm;
  if (question && !window.confirm(question)) e.preventDefault();
});

function liveRows() {
  const body = document.querySelector("tbody[data-live]");
  if (!body || !window.EventSource) return;
  const status = document.getElementById("live-status");
  const source = new EventSource(body.dataset.live);
  source.addEventListener("machine", (ev) => {
    const msg = JSON.parse(ev.data);
    const row = body.querySelector(`tr[data-mac="${CSS.escape(msg.mac)}"]`);
    if (msg.row === null) {
      if (row) row.remove();
      return;
    }
    const tpl = document.createElement("template");
    tpl.innerHTML = msg.row.trim();
    const fresh = tpl.content.firstElementChild;
    fresh.classList.add("changed");
    if (row) {
      row.replaceWith(fresh);
    } else if (body.dataset.insert) {
      // A new machine, in MAC order (the list is unfiltered and on one page).
      const placeholder = body.querySelector("tr.placeholder");
      if (placeholder) placeholder.remove();
      const after = [...body.querySelectorAll("tr[data-mac]")].find((r) => r.dataset.mac > msg.mac);
      body.insertBefore(fresh, after || null);
    }
    // Elsewhere (filtered, sorted or paged) a new machine shows on the next load.
  });
  source.addEventListener("open", () => body.setAttribute("data-connected", "1"));
  source.addEventListener("error", () => {
    body.removeAttribute("data-connected");
    if (status && source.readyState === EventSource.CLOSED) status.textContent += " Live updates stopped; reload the page.";
  });
}

function uploads() {
  const form = document.querySelector("form[data-upload]");
  if (!form) return;
  const status = document.getElementById("upload-status");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = form.elements.file.files[0];
    if (!file) return;
    const name = form.elements.name.value.trim() || file.name;
    status.textContent = `Uploading ${name} (${file.size} bytes)…`;
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    try {
      const r = await fetch(form.dataset.upload + encodeURIComponent(name), {
        method: "PUT", body: file, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin",
      });
      if (!r.ok) {
        const body = await r.json().catch(() => ({}));
        status.textContent = `Upload failed (${r.status}): ${body.error || r.statusText}`;
        return;
      }
      window.location.reload();
    } catch (err) {
      status.textContent = `Upload failed: ${err}`;
    }
  });
}

liveRows();
uploads();
