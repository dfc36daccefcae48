// Admin pages: plain JavaScript, no inline handlers (the Content-Security-Policy forbids
// inline script). data-confirm: a form's submit button asks before the form is sent.
// The question is asked on the click, before any submit listener runs: portal.js's
// data-once would otherwise disable the button of a form the admin then did not send.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    for (const button of form.querySelectorAll("button[type=submit]")) {
      button.addEventListener("click", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    }
  }
});
