// The player page: /watch/APP/NAME[?exp=…&sig=…&region=…&format=flv|hls].
// It asks the control plane's router for an edge (the page's token and region passed on) and plays it:
// HTTP-FLV with mpegts.js where Media Source Extensions exist, else LL-HLS (hls.js, or the browser's own
// HLS on Safari/iOS); ?format= forces either. The players are served by the control plane (/vendor/),
// from the npm packages pinned in web/package-lock.json, and loaded only when needed.
"use strict";

const $ = (id) => document.getElementById(id);
const video = $("video");

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.appendChild(script);
  });
}

function show(id, text, value) {
  $(id).textContent = text;
  if (value !== undefined) $(id).dataset.value = String(value);
}

async function route(stream, params) {
  const query = new URLSearchParams({ stream });
  for (const key of ["exp", "sig", "region"]) if (params.has(key)) query.set(key, params.get(key));
  const response = await fetch("/v1/route/play?" + query);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `router answered ${response.status}`);
  return body;
}

const hasMse = () => "MediaSource" in window || "ManagedMediaSource" in window;

// What the latency reading measures, per player (said on the page, next to the number).
const LATENCY_NOTES = {
  flv: "latency: seconds of video received but not yet shown (buffered end − current time): the player's " +
    "own delay behind the newest frame the edge sent; the encoder and network delays come on top.",
  hls: "latency: hls.js's estimate of the distance to the live edge of the playlist (from the segments' " +
    "program date-time when present), which includes the packaging delay on the edge.",
  native: "latency: seconds of video buffered ahead of the playhead (the browser plays HLS itself).",
};

async function playFlv(url) {
  await loadScript("/vendor/mpegts.js");
  const mpegts = window.mpegts;
  if (!mpegts.isSupported()) throw new Error("this browser has no Media Source Extensions: try ?format=hls");
  // The edge sends the GOP cache at once; chase latency so the buffer does not grow from there on.
  const player = mpegts.createPlayer({ type: "flv", isLive: true, url }, {
    enableWorker: false, lazyLoad: false, liveBufferLatencyChasing: true,
    liveBufferLatencyMaxLatency: 1.5, liveBufferLatencyMinRemain: 0.3,
  });
  let kbps = null;
  player.on(mpegts.Events.STATISTICS_INFO, (info) => { kbps = info.speed * 8; });  // speed: KiB/s received
  player.on(mpegts.Events.ERROR, (type, detail) => show("state", `error: ${type} ${detail}`));
  player.attachMediaElement(video);
  player.load();
  return { bitrate: () => kbps, latency: bufferedAhead };
}

async function playHls(url) {
  if (!hasMse() && video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = url;  // Safari on iOS: HLS (and its low-latency mode) is the browser's own
    return { bitrate: () => null, latency: bufferedAhead, note: "native" };
  }
  await loadScript("/vendor/hls.js");
  const Hls = window.Hls;
  if (!Hls.isSupported()) throw new Error("this browser can play neither HTTP-FLV nor HLS");
  const hls = new Hls({ lowLatencyMode: true, liveSyncDurationCount: 2 });
  let bytes = 0;
  let kbps = null;
  hls.on(Hls.Events.FRAG_LOADED, (_event, data) => { bytes += data.frag.stats.loaded; });
  setInterval(() => { kbps = (bytes * 8) / 1000; bytes = 0; }, 1000);
  hls.on(Hls.Events.ERROR, (_event, data) => {
    if (data.fatal) show("state", `error: ${data.type} ${data.details}`);
  });
  hls.loadSource(url);
  hls.attachMedia(video);
  return { bitrate: () => kbps, latency: () => (Number.isFinite(hls.latency) ? hls.latency : null) };
}

function bufferedAhead() {
  const ranges = video.buffered;
  return ranges.length ? Math.max(0, ranges.end(ranges.length - 1) - video.currentTime) : null;
}

function readings(player) {
  let playedFrom = null;
  setInterval(() => {
    const latency = player.latency();
    if (latency !== null) show("latency", `${latency.toFixed(2)} s`, latency.toFixed(3));
    const kbps = player.bitrate();
    if (kbps !== null) show("bitrate", `${Math.round(kbps)} kbit/s`, Math.round(kbps));
    const quality = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
    if (quality) {
      show("dropped", `${quality.droppedVideoFrames} / ${quality.totalVideoFrames}`, quality.droppedVideoFrames);
    }
    if (!video.paused && video.currentTime > 0) {
      playedFrom = playedFrom ?? video.currentTime;
      show("played", `${(video.currentTime - playedFrom).toFixed(1)} s`, video.currentTime.toFixed(3));
      show("state", "playing");
    }
  }, 500);
}

async function main() {
  const [, , app, name] = location.pathname.split("/");
  const stream = `${decodeURIComponent(app)}/${decodeURIComponent(name)}`;
  const params = new URLSearchParams(location.search);
  $("title").textContent = stream;
  document.title = `${stream} · livecdn`;
  const asked = params.get("format");
  if (asked && asked !== "flv" && asked !== "hls") throw new Error(`unknown format ${asked}: use flv or hls`);
  const format = asked || (hasMse() ? "flv" : "hls");
  show("state", "asking the router for an edge…");
  const answer = await route(stream, params);
  show("edge", `${answer.edge} (${answer.region})`, answer.edge);
  show("format", format === "flv" ? "HTTP-FLV (mpegts.js)" : "LL-HLS", format);
  const player = format === "flv" ? await playFlv(answer.flv) : await playHls(answer.hls);
  $("latency-note").textContent = LATENCY_NOTES[player.note || format];
  show("state", "buffering…");
  video.play().catch(() => show("state", "press play"));  // autoplay may need a click with sound on
  readings(player);
}

main().catch((error) => show("state", `error: ${error.message}`));
