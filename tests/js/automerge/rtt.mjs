// Measures how long one small change takes to travel tablet → server
// (checked, committed with fsync) → another tablet, with two real
// automerge-repo clients in one process. A measurement, not a test:
//
//   node rtt.mjs BASE TOKEN_A TOKEN_B DOC_URL USER_ID [N]
//
// prints {"n":…, "median_ms":…, "p95_ms":…, "max_ms":…}.
import { Repo } from "@automerge/automerge-repo";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";

const [base, tokenA, tokenB, docUrl, userId, nArg] = process.argv.slice(2);
const n = Number(nArg ?? 50);
setTimeout(() => { console.error("timed out"); process.exit(3); }, 120000).unref();
const ws = (t) => base.replace(/^http/, "ws") + "/sync?token=" + encodeURIComponent(t);
const a = new Repo({ network: [new WebSocketClientAdapter(ws(tokenA))], peerId: "rtt-a" });
const b = new Repo({ network: [new WebSocketClientAdapter(ws(tokenB))], peerId: "rtt-b" });
const ha = await a.find(docUrl);
const hb = await b.find(docUrl);
const items = ["A4", "D2"];
const times = [];
for (let i = 0; i < n; i++) {
  const item = items[i % items.length];
  const value = 1000 + i;
  const seen = new Promise((resolve) => {
    const check = () => {
      if (hb.doc()?.answers?.[item]?.value === value) {
        hb.off("change", check);
        resolve();
      }
    };
    hb.on("change", check);
  });
  // automerge-repo throttles a document's outgoing sync to one message per
  // 100 ms; waiting past that window measures the network and server, not
  // the throttle.
  await new Promise((r) => setTimeout(r, 150));
  const t0 = performance.now();
  ha.change((d) => {
    d.answers[item] = { value, by: userId, at: new Date(), fields: {}, evidence: {} };
  });
  await seen;
  times.push(performance.now() - t0);
}
times.sort((x, y) => x - y);
const q = (p) => times[Math.min(times.length - 1, Math.floor(p * times.length))];
console.log(JSON.stringify({ n, median_ms: q(0.5), p95_ms: q(0.95), max_ms: times[times.length - 1] }));
await Promise.all([a.shutdown(), b.shutdown()]);
process.exit(0);
