// The portal's only script: plain JavaScript, no build step, no inline handlers (the
// Content-Security-Policy forbids inline script). Pages mark behaviour with data-*
// attributes and this file binds it.
"use strict";

// Put the text of the element with id `id` on the clipboard; true when it worked.
async function copyText(id) {
  const source = document.getElementById(id);
  if (!source) {
    return false;
  }
  const text = source.innerText.trim();
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (_) {
    // No clipboard permission: select the text, so Ctrl+C / the menu copies it.
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    return false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  // data-once: a form is submitted once; a second click does not send it again.
  for (const form of document.querySelectorAll("form[data-once]")) {
    form.addEventListener("submit", () => {
      for (const button of form.querySelectorAll("button[type=submit]")) {
        button.disabled = true;
      }
    });
  }
  // data-copy="ID": the button copies that element's text and says so.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const label = button.textContent;
    button.addEventListener("click", async () => {
      const copied = await copyText(button.dataset.copy);
      button.textContent = copied ? "Copied" : "Selected: press Ctrl+C";
      setTimeout(() => { button.textContent = label; }, 2000);
    });
  }
});
