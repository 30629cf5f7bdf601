// Injected before the /watch page's own scripts by loadtest/browser_latency.py. It finds, per player, the
// media time (ms since the publisher's epoch) that the video element's currentTime 0 stands for:
// - mpegts.js rebases timestamps: currentTime 0 is the smallest of the first audio and first video tag
//   timestamps it received, so the HTTP-FLV response is teed and its first media tags are read here;
// - hls.js (fMP4) sets currentTime 0 at initPTS / timescale (its INIT_PTS_FOUND event).
"use strict";
window.__latency = { anchorMs: null, source: null };

const origFetch = window.fetch.bind(window);
window.fetch = async (input, init) => {
  const response = await origFetch(input, init);
  const url = typeof input === "string" ? input : input.url;
  if (!url.includes(".flv") || !response.body || window.__latency.anchorMs !== null) return response;
  const [forPlayer, forUs] = response.body.tee();
  Object.defineProperty(response, "body", { value: forPlayer });
  firstFlvTimestamps(forUs.getReader());
  return response;
};

async function firstFlvTimestamps(reader) {
  let buffer = new Uint8Array(0);
  let offset = 13;  // FLV header (9) + PreviousTagSize0 (4)
  let audio = null;
  let video = null;
  for (let tags = 0; tags < 500 && (audio === null || video === null);) {
    const { value, done } = await reader.read();
    if (done) break;
    const joined = new Uint8Array(buffer.length + value.length);
    joined.set(buffer);
    joined.set(value, buffer.length);
    buffer = joined;
    while (offset + 11 <= buffer.length) {
      const size = (buffer[offset + 1] << 16) | (buffer[offset + 2] << 8) | buffer[offset + 3];
      if (offset + 11 + size + 4 > buffer.length) break;
      const type = buffer[offset] & 0x1f;
      const ts = ((buffer[offset + 7] << 24) | (buffer[offset + 4] << 16) | (buffer[offset + 5] << 8) | buffer[offset + 6]) >>> 0;
      const payload = offset + 11;
      const header = size >= 2 && buffer[payload + 1] === 0 && (type === 9 || (buffer[payload] >> 4) === 10);
      if (!header && type === 9 && video === null) video = ts;
      if (!header && type === 8 && audio === null) audio = ts;
      offset += 11 + size + 4;
      tags += 1;
    }
  }
  reader.cancel();
  const found = [audio, video].filter((x) => x !== null);
  if (found.length) window.__latency = { anchorMs: Math.min(...found), source: "flv first tags" };
}

let HlsClass;
Object.defineProperty(window, "Hls", {
  configurable: true,
  get() { return HlsClass; },
  set(Base) {
    HlsClass = class extends Base {
      constructor(config) {
        super(config);
        this.on(Base.Events.INIT_PTS_FOUND, (_event, data) => {
          if (window.__latency.anchorMs === null) {
            window.__latency = { anchorMs: (data.initPTS / data.timescale) * 1000, source: "hls.js initPTS" };
          }
        });
      }
    };
  },
});
