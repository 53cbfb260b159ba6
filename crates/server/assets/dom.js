// DOM helpers shared by the chat page and the admin page (loaded before either's script).
// Text from the wire is only ever set as textContent, never as HTML.
"use strict";

/** The element with this id. */
const $ = (id) => document.getElementById(id);

/** A new element of `tag`, with class `cls` and text `text` when given. */
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};
