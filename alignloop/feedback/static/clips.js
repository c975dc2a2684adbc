// The clips page: two videos side by side, started together once both can play, and started
// again together each time both have reached their end (neither loops on its own, so they
// stay in step however long each one took to load); replay, pause, answers by keyboard.
// Without JavaScript the page still works: each video keeps its own controls, and the answers
// are plain submit buttons.
(function () {
  "use strict";
  var form = document.getElementById("judgment");
  if (!form || form.dataset.kind !== "clips") return;
  var videos = [document.getElementById("clip-left"), document.getElementById("clip-right")];
  var pauseButton = document.getElementById("pause");
  var skipForm = document.getElementById("skip");
  var paused = false;
  var sending = false;

  function ready() { return videos.every(function (v) { return v.readyState >= 3; }); }
  function playBoth() {
    if (paused || !ready()) return;
    videos.forEach(function (v) { var p = v.play(); if (p && p.catch) p.catch(function () {}); });
  }
  function restart() {
    videos.forEach(function (v) { v.pause(); v.currentTime = 0; });
    playBoth();
  }
  function setPaused(value) {
    paused = value;
    pauseButton.textContent = paused ? "▶ Play" : "❚❚ Pause";
    if (paused) videos.forEach(function (v) { v.pause(); }); else playBoth();
  }

  videos.forEach(function (v) {
    v.loop = false;  // the pair loops as one (below)
    v.muted = true;
    v.controls = false;  // the page's buttons and keys drive both at once
    v.addEventListener("canplay", playBoth);
    v.addEventListener("ended", function () { if (videos.every(function (x) { return x.ended; })) restart(); });
  });
  if (ready()) playBoth();
  document.getElementById("replay").addEventListener("click", function () { setPaused(false); restart(); });
  pauseButton.addEventListener("click", function () { setPaused(!paused); });

  // One answer per page: a second key press or click while the first is sent sends nothing
  // (the server would store one judgment anyway: submission_key).
  form.addEventListener("submit", function (e) {
    if (sending) { e.preventDefault(); return; }
    sending = true;
    form.setAttribute("aria-busy", "true");
  });
  function answer(id) { if (!sending) form.requestSubmit(document.getElementById(id)); }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t.closest && t.closest("textarea, input[type=text], select")) return;
    var key = e.key;
    if (key === "ArrowLeft" || key === "1") answer("answer-left");
    else if (key === "ArrowRight" || key === "2") answer("answer-right");
    else if (key === "3" || key === "e" || key === "E" || key === "=") answer("answer-equal");
    else if (key === "4" || key === "c" || key === "C" || key === "?") answer("answer-cant-tell");
    else if (key === "r" || key === "R") { setPaused(false); restart(); }
    else if (key === " ") { if (t.tagName === "BUTTON") return; setPaused(!paused); }
    else if (key === "s" || key === "S") { if (!sending) skipForm.requestSubmit(); }
    else return;
    e.preventDefault();
  });
})();
