// The rating page: rank by clicking cards in order or by dragging them, ties, keyboard keys.
// Without JavaScript the page still works: each card has a rank <select> (or thumbs radios),
// and those form fields are what is submitted; this script only sets them.
(function () {
  "use strict";
  var form = document.getElementById("judgment");
  if (!form) return;
  var kind = form.dataset.kind;
  var k = parseInt(form.dataset.k, 10);
  var list = document.getElementById("cards");
  var tie = document.getElementById("tie-mode");
  var skipForm = document.getElementById("skip");
  var lastCard = null;
  var sending = false;

  function cards() { return Array.prototype.slice.call(list.querySelectorAll(".card")); }
  function byPos(p) { return list.querySelector('.card[data-pos="' + p + '"]'); }
  function sel(card) { return card.querySelector("select"); }
  function rankOf(card) { var s = sel(card); return s && s.value ? parseInt(s.value, 10) : 0; }

  // Submitting twice (double click, Enter held down) sends one request; the server would
  // store one judgment anyway (submission_key), this only spares the round trip.
  form.addEventListener("submit", function (e) {
    if (sending) { e.preventDefault(); return; }
    sending = true;
    document.getElementById("submit").setAttribute("aria-busy", "true");
  });

  function refresh() {
    if (kind === "thumbs") return;
    var counts = {};
    cards().forEach(function (c) { var r = rankOf(c); if (r) counts[r] = (counts[r] || 0) + 1; });
    cards().forEach(function (c) {
      var r = rankOf(c);
      c.classList.toggle("ranked", r > 0);
      c.classList.toggle("tied", r > 0 && counts[r] > 1);
      c.querySelector(".badge").textContent = r ? "#" + r + (counts[r] > 1 ? " (tie)" : "") : "";
    });
  }

  // Ranks stay 1..n without gaps after a card is taken out; ties keep sharing a number.
  function compact() {
    var used = [];
    cards().forEach(function (c) { var r = rankOf(c); if (r && used.indexOf(r) < 0) used.push(r); });
    used.sort(function (a, b) { return a - b; });
    cards().forEach(function (c) { var r = rankOf(c); if (r) sel(c).value = String(used.indexOf(r) + 1); });
  }

  function pick(card) {
    lastCard = card;
    var s = sel(card);
    if (s.value) { s.value = ""; compact(); refresh(); return; }
    var max = 0;
    cards().forEach(function (c) { max = Math.max(max, rankOf(c)); });
    s.value = String(tie.checked && max > 0 ? max : max + 1);
    tie.checked = false;  // a tie applies to one pick
    refresh();
  }

  function reset() {
    cards().forEach(function (c) { sel(c).value = ""; });
    tie.checked = false;
    refresh();
  }

  if (kind !== "thumbs") {
    list.addEventListener("click", function (e) {
      if (e.target.closest("select, input, label, textarea, button, a, .handle")) return;
      var card = e.target.closest(".card");
      if (card) pick(card);
    });
    list.addEventListener("change", function (e) { if (e.target.tagName === "SELECT") refresh(); });
    document.getElementById("reset").addEventListener("click", reset);

    // Drag and drop with pointer events (mouse, pen and touch alike): the order of the cards
    // after the drop becomes the ranking, 1 at the top.
    var drag = null;
    list.addEventListener("pointerdown", function (e) {
      var handle = e.target.closest(".handle");
      if (!handle) return;
      drag = handle.closest(".card");
      drag.classList.add("dragging");
      handle.setPointerCapture(e.pointerId);
      e.preventDefault();
    });
    list.addEventListener("pointermove", function (e) {
      if (!drag) return;
      var under = document.elementFromPoint(e.clientX, e.clientY);
      var over = under && under.closest(".card");
      if (!over || over === drag || over.parentNode !== list) return;
      var all = cards();
      list.insertBefore(drag, all.indexOf(over) > all.indexOf(drag) ? over.nextSibling : over);
    });
    function drop() {
      if (!drag) return;
      drag.classList.remove("dragging");
      lastCard = drag;
      drag = null;
      cards().forEach(function (c, i) { sel(c).value = String(i + 1); });
      refresh();
    }
    list.addEventListener("pointerup", drop);
    list.addEventListener("pointercancel", drop);
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t.closest && t.closest("textarea, input[type=text], select")) return;
    var key = e.key;
    if (/^[1-9]$/.test(key) && parseInt(key, 10) <= k) {
      var card = byPos(parseInt(key, 10) - 1);
      if (kind !== "thumbs") pick(card);
      card.focus();
      lastCard = card;
    } else if (key === "Enter") {
      if (t.tagName === "BUTTON" || t.tagName === "A") return;
      form.requestSubmit(document.getElementById("submit"));
    } else if (key === "s" || key === "S") {
      skipForm.requestSubmit();
    } else if (key === "u" || key === "U") {
      var focused = (document.activeElement && document.activeElement.closest && document.activeElement.closest(".card")) || lastCard;
      if (focused) { var box = focused.querySelector('input[name="unsafe"]'); box.checked = !box.checked; }
    } else if ((key === "t" || key === "T") && tie) {
      tie.checked = !tie.checked;
    } else if ((key === "r" || key === "R") && kind !== "thumbs") {
      reset();
    } else if ((key === "g" || key === "b") && kind === "thumbs") {
      var c = (document.activeElement && document.activeElement.closest && document.activeElement.closest(".card")) || lastCard;
      if (c) c.querySelector('input[value="' + (key === "g" ? "1" : "0") + '"]').checked = true;
    } else if (key === "ArrowDown" || key === "ArrowUp") {
      var all = cards();
      var i = all.indexOf(document.activeElement);
      var next = all[Math.min(all.length - 1, Math.max(0, i + (key === "ArrowDown" ? 1 : -1)))];
      if (next) { next.focus(); lastCard = next; }
    } else {
      return;
    }
    e.preventDefault();
  });

  refresh();
})();
