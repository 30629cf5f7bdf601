// The status page, live: subscribes to the control plane's server-sent events (GET /v1/events) and
// re-renders the nodes and streams from each snapshot. Text goes in with textContent only, so a node id
// or stream name can never become markup. EventSource reconnects by itself after a control restart.
"use strict";

function cell(row, value, className) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "" : String(value);
  if (className) td.className = className;
}

function table(headers, rows) {
  const wrap = document.createElement("div");
  wrap.className = "scroll";
  const t = document.createElement("table");
  const head = t.createTHead().insertRow();
  for (const h of headers) {
    const th = document.createElement("th");
    th.textContent = h;
    head.appendChild(th);
  }
  const body = t.createTBody();
  if (rows.length === 0) {
    const td = body.insertRow().insertCell();
    td.colSpan = headers.length;
    td.textContent = "none";
  }
  for (const cells of rows) {
    const row = body.insertRow();
    for (const [value, className] of cells) cell(row, value, className);
  }
  wrap.appendChild(t);
  return wrap;
}

function section(title, content) {
  const h = document.createElement("h2");
  h.textContent = title;
  return [h, content];
}

function render(snapshot) {
  const live = document.getElementById("live");
  const parts = [];
  const roles = [...new Set(snapshot.nodes.map((n) => n.role))];
  for (const role of roles) {
    const nodes = snapshot.nodes.filter((n) => n.role === role);
    parts.push(...section(`${role}s (${nodes.length})`, table(
      ["id", "region", "state", "viewers", "streams", "Mbit/s out", "heartbeat", "http"],
      nodes.map((n) => [
        [n.id], [n.region], [n.state, "state-" + n.state.replace(/ /g, "-")], [n.viewers], [n.streams],
        [n.mbps_out.toFixed(2)], [n.heartbeat_age_s === null ? "" : `${n.heartbeat_age_s}s ago`], [n.http],
      ]),
    )));
  }
  if (roles.length === 0) parts.push(...section("Nodes (0)", table(["id"], [])));
  parts.push(...section(`Streams (${snapshot.streams.length})`, table(
    ["stream", "origin", "viewers", "on edges", "watch"],
    snapshot.streams.map((s) => [
      [s.stream], [s.origin], [s.viewers],
      [s.edges.map((e) => `${e.id} (${e.region}): ${e.viewers}`).join(", ") || "none"],
      ["/watch/" + s.stream],
    ]),
  )));
  live.replaceChildren(...parts);
  for (const td of live.querySelectorAll("td")) {  // the watch column: a link, built without markup
    if (td.textContent.startsWith("/watch/")) {
      const a = document.createElement("a");
      a.href = td.textContent;
      a.textContent = "watch";
      td.replaceChildren(a);
    }
  }
  document.getElementById("registry").textContent = snapshot.registry;
  document.getElementById("updated").textContent = "live, updated " + new Date().toLocaleTimeString();
}

const events = new EventSource("/v1/events");
events.addEventListener("status", (e) => render(JSON.parse(e.data)));
events.onerror = () => { document.getElementById("updated").textContent = "reconnecting…"; };
