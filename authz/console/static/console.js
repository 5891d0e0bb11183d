// The console's only script: refreshes the parts of a page marked data-live="URL".
// Every 2 seconds it asks URL for the part, saying which version it shows; the server answers
// 204 when nothing changed, so focus and reading position stay put, or the new HTML.
// Served from the console itself: the Content-Security-Policy allows no other script.
"use strict";

const INTERVAL_MS = 2000;

function watch(element) {
  let version = "";
  async function refresh() {
    try {
      const response = await fetch(element.dataset.live, {
        headers: { "x-live-version": version },
        credentials: "same-origin",
      });
      if (response.status === 401) {
        window.location.reload();
        return;
      }
      const next = response.headers.get("x-live-version") || "";
      if (response.status === 200 && next !== version) {
        if (version !== "") {
          element.innerHTML = await response.text();
        }
        version = next;
      }
    } catch (error) {
      // The gateway restarting or the network down: try again next time.
    }
    window.setTimeout(refresh, INTERVAL_MS);
  }
  refresh();
}

document.querySelectorAll("[data-live]").forEach(watch);
