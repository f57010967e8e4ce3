// Live updates: the server announces every change of an approval request
// (server-sent events fed by LISTEN/NOTIFY); the queue re-fetches its rows, a
// request's page says it changed. Without JavaScript the pages work as they are.
(function () {
  var kind = document.body.dataset.live;
  if (!kind || !window.EventSource) return;
  var rows = document.getElementById("queue-rows");
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch("/approvals?fragment=rows", {credentials: "same-origin"}).then(function (r) {
      if (r.status === 401) { location.href = "/?why=idle&next=/approvals"; return; }
      return r.ok ? r.text() : undefined;
    }).then(function (html) {
      if (html !== undefined) rows.innerHTML = html;
    }).finally(function () {
      busy = false;
      if (again) { again = false; refresh(); }
    });
  }
  var source = new EventSource("/events");
  source.onmessage = function (e) {
    document.body.dataset.connected = "yes";
    if (kind === "queue") { refresh(); return; }
    var parts = e.data.split(":");
    if (parts[1] === document.body.dataset.request) document.getElementById("changed").hidden = false;
  };
  if (kind === "queue") setInterval(refresh, 30000);  // waiting times move on
})();
