// The portal's only script: plain JavaScript, no build step, no inline handlers (the
// Content-Security-Policy forbids inline script). Pages mark behaviour with data-*
// attributes and this file binds it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // data-once: a form is submitted once; a second click does not send it again.
  for (const form of document.querySelectorAll("form[data-once]")) {
    form.addEventListener("submit", () => {
      for (const button of form.querySelectorAll("button[type=submit]")) {
        button.disabled = true;
      }
    });
  }
});
