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

// Server messages quote names in `backquotes`: shown as code, never as HTML.
function showMessage(el, text) {
  el.textContent = "";
  String(text).split("`").forEach((part, i, all) => {
    if (i % 2 === 1 && i < all.length - 1) {
      const code = document.createElement("code");
      code.textContent = part;
      el.appendChild(code);
    } else {
      el.appendChild(document.createTextNode(i % 2 === 1 ? "`" + part : part));
    }
  });
}

// Upload forms PUT the file itself (streamed by the browser) to
// data-upload + name; other named fields go along as query parameters.
function uploads() {
  for (const form of document.querySelectorAll("form[data-upload]")) {
    const status = form.querySelector('[role="status"]');
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const file = form.elements.file.files[0];
      if (!file) return;
      const name = form.elements.name.value.trim() || file.name;
      const params = new URLSearchParams();
      for (const el of form.elements) {
        if (el.name && el.name !== "file" && el.name !== "name" && el.value.trim()) params.set(el.name, el.value.trim());
      }
      const query = params.toString() ? "?" + params.toString() : "";
      showMessage(status, `Uploading ${name} (${file.size} bytes)…`);
      const csrf = document.querySelector('meta[name="csrf-token"]').content;
      try {
        const r = await fetch(form.dataset.upload + encodeURIComponent(name) + query, {
          method: "PUT", body: file, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin",
        });
        if (!r.ok) {
          const body = await r.json().catch(() => ({}));
          showMessage(status, `Upload failed (${r.status}): ${body.error || r.statusText}`);
          return;
        }
        if (form.dataset.done) window.location.assign(form.dataset.done);
        else window.location.reload();
      } catch (err) {
        showMessage(status, `Upload failed: ${err}`);
      }
    });
  }
}

liveRows();
uploads();
