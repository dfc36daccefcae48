// Admin pages: plain JavaScript, no inline handlers (the Content-Security-Policy forbids
// inline script). data-confirm: a form asks before it is submitted.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
        event.stopImmediatePropagation();
      }
    });
  }
});
