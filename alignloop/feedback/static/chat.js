// The chat page and the arena: send a message, show the answer(s) as they stream in (NDJSON
// from /api/chat/...), thumbs under chat answers, votes under arena battles. Model text is only
// ever set with textContent: it is shown as text, never parsed as HTML.
(function () {
  "use strict";
  const root = document.getElementById("chat");
  if (!root) return;
  const mode = root.dataset.mode;
  const csrf = root.dataset.csrf;
  const maxTurns = Number(root.dataset.maxTurns);
  const log = document.getElementById("log");
  const input = document.getElementById("input");
  const form = document.getElementById("composer");
  const sendButton = document.getElementById("send");
  const errorBox = document.getElementById("error");
  const modelSelect = document.getElementById("model");
  const talkingTo = document.getElementById("talking-to");
  let conversation = null; // {id, mode, model}
  let turns = 0;
  let busy = false;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function key() { // an idempotency key (getRandomValues works without a secure context too)
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  async function detail(response) {
    try {
      const body = await response.json();
      if (typeof body.detail === "string") return body.detail;
      if (Array.isArray(body.detail)) return body.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ");
    } catch (e) { /* not JSON */ }
    return "HTTP " + response.status;
  }

  async function api(method, path, body, headers) {
    const response = await fetch(path, {
      method, credentials: "same-origin",
      headers: Object.assign({"content-type": "application/json", "x-csrf-token": csrf}, headers || {}),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) throw new Error(await detail(response));
    return response;
  }

  function setBusy(on) {
    busy = on;
    sendButton.disabled = on;
    document.querySelectorAll(".regenerate").forEach((b) => { b.disabled = on; });
  }

  // --- one turn on the page ---------------------------------------------------------------

  function answerBox(side, label) {
    const box = el("div", "answer");
    box.dataset.side = side;
    const head = el("div", "answer-head");
    head.appendChild(el("span", "label", label));
    box.appendChild(head);
    box.appendChild(el("div", "text"));
    box.appendChild(el("div", "answer-tools"));
    return box;
  }

  function addTurn(turn, userText, labels) {
    const li = el("li", "turn");
    li.dataset.turn = turn;
    const user = el("div", "msg user");
    user.appendChild(el("span", "role", "you"));
    user.appendChild(el("div", "text", userText));
    li.appendChild(user);
    const answers = el("div", mode === "arena" ? "replies side-by-side" : "replies");
    labels.forEach((label, side) => answers.appendChild(answerBox(side, label)));
    li.appendChild(answers);
    li.appendChild(el("div", "turn-tools"));
    log.appendChild(li);
    return li;
  }

  function box(li, side) { return li.querySelector('.answer[data-side="' + side + '"]'); }

  function thumbs(tools, messageId, stored) {
    tools.replaceChildren();
    const up = el("button", "thumb up", "▲ Good");
    const down = el("button", "thumb down", "▼ Bad");
    up.type = down.type = "button";
    up.title = "Thumb up"; down.title = "Thumb down";
    up.setAttribute("aria-label", "Thumb up"); down.setAttribute("aria-label", "Thumb down");
    const reason = el("input", "reason");
    reason.placeholder = "Why? (optional)";
    reason.maxLength = 2000;
    const status = el("span", "muted status");
    tools.append(up, down, reason, status);
    const done = (t) => {
      up.disabled = down.disabled = reason.disabled = true;
      (t.up ? up : down).classList.add("chosen");
      reason.value = t.reason;
      status.textContent = t.up ? "Thumb up stored." : "Thumb down stored.";
    };
    if (stored) { done(stored); return; }
    let k = null;
    const send = async (isUp) => {
      k = k || key(); // a retry of this answer's thumb reuses its key: stored once
      try {
        const r = await api("POST", "/api/chat/messages/" + messageId + "/thumb", {up: isUp, reason: reason.value},
                            {"idempotency-key": k});
        done(await r.json());
        showError("");
      } catch (e) { showError(e.message); }
    };
    up.addEventListener("click", () => send(true));
    down.addEventListener("click", () => send(false));
  }

  function reveal(li, v) {
    ["Model A", "Model B"].forEach((name, side) => {
      const label = box(li, side).querySelector(".label");
      label.textContent = name + ": " + v.models[side];
      label.classList.add("revealed");
    });
    const tools = li.querySelector(".turn-tools");
    tools.replaceChildren();
    const words = {a: "Model A is better", b: "Model B is better", tie: "A tie", both_bad: "Both are bad"};
    tools.appendChild(el("span", "notice vote-stored", "Vote stored: " + words[v.outcome] + "." + (v.flagged ? " Flagged." : "")));
    if (!v.flagged) {
      const flag = el("button", "flag", "Flag: a model revealed its identity");
      flag.type = "button";
      flag.addEventListener("click", async () => {
        try {
          const r = await api("POST", "/api/chat/battles/" + v.battle_id + "/flag", {reason: "revealed its identity"});
          reveal(li, await r.json());
        } catch (e) { showError(e.message); }
      });
      tools.appendChild(flag);
    }
  }

  function voteForm(li, battleId) {
    const tools = li.querySelector(".turn-tools");
    tools.replaceChildren();
    const flagged = el("input");
    flagged.type = "checkbox";
    flagged.id = "flag-" + battleId;
    const flagLabel = el("label", "flag-label");
    flagLabel.append(flagged, document.createTextNode(" a model revealed its identity (flag)"));
    let k = null;
    [["a", "← A is better"], ["b", "B is better →"], ["tie", "Tie"], ["both_bad", "Both are bad"]].forEach(([outcome, text]) => {
      const b = el("button", "vote", text);
      b.type = "button";
      b.dataset.outcome = outcome;
      b.addEventListener("click", async () => {
        k = k || key();
        tools.querySelectorAll("button").forEach((x) => { x.disabled = true; });
        try {
          const r = await api("POST", "/api/chat/battles/" + battleId + "/vote",
                              {outcome, flagged: flagged.checked, reason: flagged.checked ? "revealed its identity" : ""},
                              {"idempotency-key": k});
          reveal(li, await r.json());
          showError("");
          sendButton.disabled = false;
          input.focus();
        } catch (e) {
          showError(e.message);
          tools.querySelectorAll("button").forEach((x) => { x.disabled = false; });
        }
      });
      tools.appendChild(b);
    });
    tools.appendChild(flagLabel);
  }

  function regenerateButton(li) {
    log.querySelectorAll(".regenerate").forEach((x) => { if (!li.contains(x)) x.remove(); }); // the last turn only
    const tools = li.querySelector(".turn-tools");
    let b = tools.querySelector(".regenerate");
    if (!b) {
      b = el("button", "regenerate", "↻ Regenerate");
      b.type = "button";
      b.addEventListener("click", () => regenerate(li));
      tools.appendChild(b);
    }
    b.disabled = busy;
  }

  // --- streaming ----------------------------------------------------------------------------

  async function relay(response, li) {
    // NDJSON events: turn, delta, answer, error, end (chat_web.py)
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const state = {battle: null, answered: {}, failed: false};
    const handle = (ev) => {
      if (ev.event === "turn") {
        state.battle = ev.battle;
      } else if (ev.event === "delta") {
        box(li, ev.side).querySelector(".text").append(ev.text);
      } else if (ev.event === "answer") {
        const b = box(li, ev.side);
        b.classList.remove("streaming");
        b.classList.add("done");
        b.dataset.messageId = ev.message_id;
        state.answered[ev.side] = ev.message_id;
        if (ev.finish_reason === "length") b.querySelector(".answer-head").appendChild(el("span", "muted", " (cut at the length limit)"));
        if (mode === "chat") thumbs(b.querySelector(".answer-tools"), ev.message_id, null);
      } else if (ev.event === "error") {
        const b = box(li, ev.side);
        b.classList.remove("streaming");
        b.classList.add("failed");
        b.querySelector(".answer-tools").replaceChildren(el("p", "error answer-error", ev.message));
        state.failed = true;
      }
    };
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.trim()) handle(JSON.parse(line));
      }
    }
    return state;
  }

  async function afterTurn(li, state) {
    if (mode === "chat") {
      regenerateButton(li);
      return;
    }
    if (state.battle !== null) li.dataset.battle = state.battle;
    if (Object.keys(state.answered).length === 2 || li.querySelectorAll(".answer.done").length === 2) {
      li.querySelector(".turn-tools").replaceChildren();
      voteForm(li, li.dataset.battle);
    } else {
      regenerateButton(li); // arena: regenerate the side that failed
    }
  }

  async function start() {
    if (conversation) return conversation;
    const body = {mode};
    if (mode === "chat" && modelSelect && modelSelect.value) body.model = modelSelect.value;
    const r = await api("POST", "/api/chat/conversations", body);
    conversation = await r.json();
    history.replaceState(null, "", "?c=" + conversation.id);
    if (conversation.model && talkingTo) {
      talkingTo.textContent = "Talking to " + conversation.model + ".";
      talkingTo.hidden = false;
    }
    if (modelSelect) modelSelect.disabled = true;
    return conversation;
  }

  async function send(text) {
    if (busy) return;
    if (turns >= maxTurns) { showError("This conversation has reached its " + maxTurns + " messages; start a new one."); return; }
    setBusy(true);
    showError("");
    let li = null;
    try {
      await start();
      const response = await api("POST", "/api/chat/conversations/" + conversation.id + "/messages", {content: text, turn: turns});
      const labels = mode === "arena" ? ["Model A", "Model B"] : [conversation.model];
      li = addTurn(turns, text, labels);
      li.querySelectorAll(".answer").forEach((b) => b.classList.add("streaming"));
      turns += 1;
      input.value = "";
      const state = await relay(response, li);
      setBusy(false);
      await afterTurn(li, state);
      if (mode === "arena" && !state.failed) sendButton.disabled = true; // vote first
    } catch (e) {
      setBusy(false);
      showError(e.message);
    }
  }

  async function regenerate(li) {
    if (busy) return;
    setBusy(true);
    showError("");
    try {
      const response = await api("POST", "/api/chat/conversations/" + conversation.id + "/regenerate");
      const sides = mode === "chat" ? [0] : Array.from(li.querySelectorAll(".answer.failed"), (b) => Number(b.dataset.side));
      sides.forEach((side) => {
        const b = box(li, side);
        b.classList.remove("done", "failed");
        b.classList.add("streaming");
        b.querySelector(".text").textContent = "";
        b.querySelector(".answer-tools").replaceChildren();
      });
      const state = await relay(response, li);
      setBusy(false);
      await afterTurn(li, state);
      if (mode === "arena" && li.querySelectorAll(".answer.done").length === 2) sendButton.disabled = true;
    } catch (e) {
      setBusy(false);
      showError(e.message);
    }
  }

  async function resume(id) {
    const r = await api("GET", "/api/chat/conversations/" + id);
    const c = await r.json();
    if (c.mode !== mode) { location.href = "/" + c.mode + "?c=" + c.id; return; }
    conversation = {id: c.id, mode: c.mode, model: c.model};
    if (modelSelect) modelSelect.disabled = true;
    if (c.model && talkingTo) { talkingTo.textContent = "Talking to " + c.model + "."; talkingTo.hidden = false; }
    c.turns.forEach((t) => {
      const labels = mode === "arena" ? ["Model A", "Model B"] : [c.model];
      const li = addTurn(t.turn, t.user, labels);
      t.answers.forEach((a) => {
        const b = box(li, a.side);
        b.querySelector(".text").textContent = a.content;
        b.classList.add("done");
        b.dataset.messageId = a.message_id;
        if (mode === "chat") thumbs(b.querySelector(".answer-tools"), a.message_id, a.thumb);
      });
      if (t.battle) {
        li.dataset.battle = t.battle.id;
        if (t.battle.vote) reveal(li, Object.assign({battle_id: t.battle.id}, t.battle.vote));
      }
      turns = t.turn + 1;
    });
    const last = log.lastElementChild;
    if (last) {
      if (mode === "chat") regenerateButton(last);
      else if (!last.querySelector(".vote-stored")) {
        if (last.querySelectorAll(".answer.done").length === 2) { voteForm(last, last.dataset.battle); sendButton.disabled = true; }
        else { last.querySelectorAll(".answer:not(.done)").forEach((b) => b.classList.add("failed")); regenerateButton(last); }
      }
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (text) send(text);
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      if (!sendButton.disabled) form.requestSubmit();
    }
  });
  document.getElementById("new").addEventListener("click", () => { location.href = "/" + mode; });

  const c = new URLSearchParams(location.search).get("c");
  if (c && /^[0-9]{1,10}$/.test(c)) resume(c).catch((e) => showError(e.message));
  input.focus();
})();
