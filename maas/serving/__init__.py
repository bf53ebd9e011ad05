"""Serving logic, kept out of Ray actors so that it is unit-testable; one file per job, as KServe
keeps its protocol endpoints apart from its data plane and model:

=============  ==================================================================================
settings.py    the Serve config's schemas (app ``args``, a model's ``user_config``) and the one
               order in which a model's settings are resolved
versions.py    version policy + labels -> what a model serves; which version a request gets
auth.py        API keys on predict, and admin keys on the admin routes
keys.py        the store of scoped keys (hashed; models, role, rate)
admin.py       what the admin routes (``serve/admin.py``) accept and answer
inputs.py      a request's rows checked against a version's schema -> one float32 (or string) batch
tfserving.py   TensorFlow Serving REST (v1): the request envelope, response, status and metadata
json_arrays.py large bodies of plain numbers (v1 rows, a v2 tensor's data) straight into arrays
oip.py         Open Inference Protocol (v2): tensors in, tensors out, model metadata
oip_binary.py  its binary tensor data extension (Triton's, ``tritonclient``'s default): a JSON
               header, then raw tensor bytes, in requests and answers
model.py       one loaded version: the traced graph call, warm-up, status
batching.py    one model call per version for a batch of requests
host.py        ``ModelHost``: one model's versions in one replica (swaps, polling, batching,
               back-pressure); the Serve deployments in ``serve/`` wrap it
metrics.py     request counts buffered between flushes
=============  ==================================================================================

Where a request is parsed, once:

1. The HTTP ingress (``serve/``) reads the body (size limit, JSON; a body over 2 KiB of plain
   numbers straight into an array, ``json_arrays``), checks the API key, and for
   v1 takes the rows out of the TF Serving envelope (``instances`` / ``inputs``): the envelope
   is the same for every model, and the ingress needs its format (row or columnar) to shape the
   answer. A v2 body goes on whole: its JSON, or, with binary tensor data
   (``Inference-Header-Content-Length``), a ``oip_binary.BinaryV2Request``: the JSON header and
   each binary input's bytes, cut apart here once their sizes are checked against the body. It
   crosses a Serve handle as plain bytes (no tensor is decoded in the ingress); the ingress also
   reads which outputs the answer should carry as binary (``oip.v2_reply_options``).
2. The model's host, which knows each served version's schema, picks the version the request
   asks for, then parses v2 tensors (``oip.parse_v2_tensor``; binary ones decoded from their
   bytes, ``oip_binary.decode_binary_tensor``) and checks the rows against that version's schema
   (``inputs.to_batch``). So a request is validated against the very model that
   answers it, even when a swap happens while it waits, and a model hosted in its own deployment
   costs one handle call per request, not two.
3. The ingress shapes the answer: JSON, or for v2 the outputs asked for as binary after a JSON
   header (``oip_binary.binary_outputs``, ``application/octet-stream``).

Errors a user causes are ``maas.errors`` kinds; where they cross a Serve handle they travel as
``maas.errors.ErrorReply`` data, and the ingress's one exception handler turns them into
``{"error": message}`` with the kind's HTTP status.
"""
