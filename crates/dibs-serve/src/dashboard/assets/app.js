// dibs dashboard: a little progressive JavaScript. Every page works without it.
//
// The requests board refreshes itself: an element with `data-live="MS"` is fetched again
// every MS milliseconds and replaced in place, while the tab is visible and nobody is
// typing in a form on the page. A "Refresh" link does the same by hand without JavaScript.
(function () {
  "use strict";
  const live = document.querySelector("[data-live]");
  if (!live || !window.fetch || !window.DOMParser) return;
  const every = Math.max(1000, parseInt(live.getAttribute("data-live"), 10) || 3000);
  let busy = false;
  function typing() {
    const focused = document.activeElement;
    return focused && focused.closest && focused.closest("form") !== null &&
      (focused.tagName === "INPUT" || focused.tagName === "SELECT" || focused.tagName === "TEXTAREA");
  }
  async function refresh() {
    if (busy || document.hidden || typing()) return;
    busy = true;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (!response.ok || response.redirected) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById(live.id);
      const current = document.getElementById(live.id);
      if (fresh && current) current.replaceWith(fresh);
    } catch (e) {
      // A failed refresh is tried again at the next tick.
    } finally {
      busy = false;
    }
  }
  window.setInterval(refresh, every);
})();
