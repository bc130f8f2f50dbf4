// A real automerge-repo client (npm @automerge/automerge-repo 2.5.6 with
// @automerge/automerge-repo-network-websocket 2.5.6) that kiemtra's
// end-to-end tests drive. One JSON object is printed on stdout.
//
//   node client.mjs find   BASE TOKEN PEER_ID DOC_URL
//   node client.mjs answer BASE TOKEN PEER_ID DOC_URL ITEM VALUE USER_ID
//
// BASE is http://127.0.0.1:PORT. `find` prints the document (or
// {"unavailable": true}); `answer` writes a yes/no answer as the document
// schema requires (docs/DOCUMENTS.md) and waits until the server's
// projection shows it, i.e. until the server has committed it.
import { Repo } from "@automerge/automerge-repo";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";

const [cmd, base, token, peerId, docUrl, ...rest] = process.argv.slice(2);
if (!cmd || !base || !token || !peerId || !docUrl) {
  console.error("usage: client.mjs find|answer BASE TOKEN PEER_ID DOC_URL [ITEM VALUE USER_ID]");
  process.exit(2);
}

const wsUrl = base.replace(/^http/, "ws") + "/sync?token=" + encodeURIComponent(token);
const repo = new Repo({
  network: [new WebSocketClientAdapter(wsUrl)],
  peerId,
  sharePolicy: async () => true,
});

function finish(obj, code = 0) {
  // Unsigned integers (the `schema` field, template versions) arrive as
  // BigInt; JSON has no such thing.
  const json = JSON.stringify(obj, (_, v) => (typeof v === "bigint" ? Number(v) : v));
  process.stdout.write(json + "\n");
  repo.shutdown().finally(() => process.exit(code));
  setTimeout(() => process.exit(code), 2000).unref();
}

const deadline = setTimeout(() => finish({ error: "timed out" }, 3), 30000);

async function answerCount(id) {
  const r = await fetch(`${base}/api/v1/inspections/${id}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  if (!r.ok) throw new Error(`GET inspection: ${r.status}`);
  return (await r.json()).answers;
}

try {
  let handle;
  try {
    handle = await repo.find(docUrl);
  } catch (e) {
    clearTimeout(deadline);
    finish({ unavailable: true, reason: String(e) });
  }
  if (handle) {
    if (cmd === "find") {
      clearTimeout(deadline);
      finish({ doc: handle.doc(), heads: handle.heads() });
    } else if (cmd === "answer") {
      const [item, value, userId] = rest;
      const id = docUrl.replace(/^automerge:/, "");
      const before = await answerCount(id);
      handle.change((d) => {
        d.answers[item] = { value, by: userId, at: new Date(), fields: {}, evidence: {} };
      });
      // The server answers a change only after committing it; its
      // projection is written in the same transaction.
      for (;;) {
        if ((await answerCount(id)) > before) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      clearTimeout(deadline);
      finish({ ok: true, heads: handle.heads(), doc: handle.doc() });
    } else {
      clearTimeout(deadline);
      finish({ error: `unknown command ${cmd}` }, 2);
    }
  }
} catch (e) {
  clearTimeout(deadline);
  finish({ error: String(e && e.stack ? e.stack : e) }, 1);
}
