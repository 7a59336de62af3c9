// A small, plain terminal for the dashboard: lines of text, a cursor, the few control
// sequences a shell's line editing uses (CR, LF, BS, erase in line); every other escape
// sequence is dropped.  Output is only ever put in the page as text (textContent).
"use strict";

class PlainTerminal {
  constructor(screen, maxLines = 2000) {
    this.screen = screen;
    this.maxLines = maxLines;
    this.lines = [""];
    this.col = 0;
    this.pending = "";  // an escape sequence cut between two chunks
    this.decoder = new TextDecoder("utf-8");
  }

  write(bytes) {
    this.feed(this.decoder.decode(bytes, { stream: true }));
  }

  feed(text) {
    text = this.pending + text;
    this.pending = "";
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (c === "\x1b") {
        const rest = text.slice(i);
        const m = /^\x1b(\[[0-9;?]*[ -\/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[^\[\]()])/.exec(rest);
        if (!m) {
          if (rest.length < 64) { this.pending = rest; break; }
          continue;  // a broken sequence: drop the ESC
        }
        const seq = m[0];
        if (/^\x1b\[[0-9]*K$/.test(seq)) this.eraseLine(seq);
        else if (/^\x1b\[[0-9]*D$/.test(seq)) this.col = Math.max(0, this.col - (parseInt(seq.slice(2)) || 1));
        else if (/^\x1b\[[0-9]*C$/.test(seq)) this.col += parseInt(seq.slice(2)) || 1;
        else if (/^\x1b\[[0-9;]*[Hf]$/.test(seq) || seq === "\x1b[2J") { /* full-screen: ignored */ }
        i += seq.length - 1;
        continue;
      }
      if (c === "\n") { this.newline(); continue; }
      if (c === "\r") { this.col = 0; continue; }
      if (c === "\b") { this.col = Math.max(0, this.col - 1); continue; }
      if (c === "\x07" || c < " ") continue;
      this.put(c);
    }
    this.render();
  }

  put(c) {
    let line = this.lines[this.lines.length - 1];
    if (line.length < this.col) line = line.padEnd(this.col, " ");
    line = line.slice(0, this.col) + c + line.slice(this.col + 1);
    this.lines[this.lines.length - 1] = line;
    this.col += 1;
  }

  eraseLine(seq) {
    const n = this.lines.length - 1;
    const how = seq.slice(2, -1) || "0";
    if (how === "0") this.lines[n] = this.lines[n].slice(0, this.col);
    else if (how === "2") this.lines[n] = "";
  }

  newline() {
    this.lines.push("");
    this.col = 0;
    if (this.lines.length > this.maxLines) this.lines.splice(0, this.lines.length - this.maxLines);
  }

  text() { return this.lines.join("\n"); }

  render() {
    this.screen.textContent = this.text();
    this.screen.scrollTop = this.screen.scrollHeight;
  }
}

// What a key sends to a shell (null: nothing, the browser keeps it).
function keyBytes(e) {
  if (e.ctrlKey && !e.altKey && e.key.length === 1) {
    const k = e.key.toUpperCase();
    if (k >= "@" && k <= "_") return String.fromCharCode(k.charCodeAt(0) - 64);
    return null;
  }
  const named = {
    Enter: "\r", Backspace: "\x7f", Tab: "\t", Escape: "\x1b", Delete: "\x1b[3~",
    ArrowUp: "\x1b[A", ArrowDown: "\x1b[B", ArrowRight: "\x1b[C", ArrowLeft: "\x1b[D",
    Home: "\x1b[H", End: "\x1b[F", PageUp: "\x1b[5~", PageDown: "\x1b[6~",
  };
  if (e.key in named) return named[e.key];
  if (e.key.length === 1 && !e.metaKey) return e.altKey ? "\x1b" + e.key : e.key;
  return null;
}

window.PlainTerminal = PlainTerminal;
window.keyBytes = keyBytes;
