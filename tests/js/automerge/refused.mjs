// A real automerge-repo client (npm @automerge/automerge-repo 2.5.6 with
// @automerge/automerge-repo-network-websocket 2.5.6) that writes something
// the server refuses, and prints the `error` message the server sent about
// it, as decoded from the wire. One JSON object is printed on stdout:
//
//   node refused.mjs BASE TOKEN PEER_ID DOC_URL ITEM BY
//
// writes answers[ITEM] with `by: BY` and prints
// {"heads": [hex hashes after the change], "error": {...the error message...}}.
//
// The network adapter does not emit `error` messages (it only logs their
// text), so a subclass looks at every frame before the adapter handles it.
import * as A from "@automerge/automerge";
import { Repo, cbor } from "@automerge/automerge-repo";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";

const [base, token, peerId, docUrl, item, by] = process.argv.slice(2);
if (!base || !token || !peerId || !docUrl || !item || !by) {
  console.error("usage: refused.mjs BASE TOKEN PEER_ID DOC_URL ITEM BY");
  process.exit(2);
}
const documentId = docUrl.replace(/^automerge:/, "");

const errors = [];
let onError = () => {};

class ObservingAdapter extends WebSocketClientAdapter {
  receiveMessage(messageBytes) {
    try {
      const message = cbor.decode(new Uint8Array(messageBytes));
      if (message && message.type === "error") {
        errors.push(message);
        onError();
      }
    } catch {
      // Not ours to judge: the adapter reports undecodable frames itself.
    }
    return super.receiveMessage(messageBytes);
  }
}

const wsUrl = base.replace(/^http/, "ws") + "/sync?token=" + encodeURIComponent(token);
const repo = new Repo({
  network: [new ObservingAdapter(wsUrl)],
  peerId,
  sharePolicy: async () => true,
});

function finish(obj, code = 0) {
  const json = JSON.stringify(obj, (_, v) => (typeof v === "bigint" ? Number(v) : v));
  process.stdout.write(json + "\n");
  repo.shutdown().finally(() => process.exit(code));
  setTimeout(() => process.exit(code), 2000).unref();
}

const deadline = setTimeout(() => finish({ error: null, timedOut: true, errors }, 3), 30000);

try {
  const handle = await repo.find(docUrl);
  const refused = new Promise((resolve) => {
    const check = () => {
      const e = errors.find((m) => m.documentId === documentId);
      if (e) resolve(e);
    };
    onError = check;
    check();
  });
  handle.change((d) => {
    d.answers[item] = { value: "yes", by, at: new Date(), fields: {}, evidence: {} };
  });
  // Hex change hashes, as the server names them.
  const heads = A.getHeads(handle.doc());
  const error = await refused;
  clearTimeout(deadline);
  finish({ heads, error, errors });
} catch (e) {
  clearTimeout(deadline);
  finish({ error: null, failure: String(e && e.stack ? e.stack : e) }, 1);
}
