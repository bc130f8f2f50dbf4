// Uploads one file to kiemtra with the real tus-js-client; when the
// connection breaks part-way (the test cuts it), resumes with a fresh client
// object, as a tablet would after losing its network. Prints one line of JSON:
//   {"first": {...}, "second": {...}, "events": [...]}
// where `events` lists every request and response the client made.
//
// Usage: node tus_upload.mjs ENDPOINT TOKEN FILE SHA256
import fs from 'node:fs';
import { Upload } from 'tus-js-client';

const [endpoint, token, file, sha256] = process.argv.slice(2);
if (!endpoint || !token || !file || !sha256) {
  console.error('usage: node tus_upload.mjs ENDPOINT TOKEN FILE SHA256');
  process.exit(2);
}
const data = fs.readFileSync(file);
// Small chunks so the upload takes several PATCH requests.
const chunkSize = 256 * 1024;
const events = [];

function options(extra) {
  return {
    endpoint,
    chunkSize,
    // A failure must show, not be retried silently.
    retryDelays: [],
    headers: { Authorization: `Bearer ${token}` },
    metadata: { sha256, filename: 'hien-truong.jpg', filetype: 'image/jpeg' },
    storeFingerprintForResuming: false,
    onBeforeRequest(req) {
      events.push({ kind: 'request', method: req.getMethod(), offset: req.getHeader('Upload-Offset') ?? null });
    },
    onAfterResponse(req, res) {
      events.push({
        kind: 'response',
        method: req.getMethod(),
        status: res.getStatus(),
        offset: res.getHeader('Upload-Offset') ?? null,
      });
    },
    ...extra,
  };
}

function fail(error) {
  console.log(JSON.stringify({ error: String(error), events }));
  process.exit(1);
}

// First attempt: the test runs it through a proxy that cuts the
// connection part-way through the upload, as a lost network would.
const first = await new Promise((resolve, reject) => {
  const upload = new Upload(
    data,
    options({
      onSuccess() {
        reject(new Error('the first attempt finished: the connection was never cut'));
      },
      onError(error) {
        resolve({ url: upload.url, error: String(error) });
      },
    }),
  );
  upload.start();
}).catch(fail);

// Second attempt: a new client object that knows only the upload URL asks
// the server for its offset (HEAD) and sends the rest from there.
const second = await new Promise((resolve, reject) => {
  const upload = new Upload(
    data,
    options({
      uploadUrl: first.url,
      onSuccess() {
        resolve({ url: upload.url });
      },
      onError: reject,
    }),
  );
  upload.start();
}).catch(fail);

console.log(JSON.stringify({ first, second, size: data.length, events }));
