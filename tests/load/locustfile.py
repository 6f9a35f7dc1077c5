"""The scenario of scripts/load: Locust users that upload, verify and delete images.

Run by tests/load/driver.py (`locust --headless -f tests/load/locustfile.py ...`), which sets:
  LOAD_QCOW2        a small qcow2 made with qemu-img/qemu-io, uploaded and slimmed
  LOAD_RESULT       where to write the counters this file keeps (JSON, at exit)
  LOAD_TMP          a scratch directory (slimmed downloads compared with qemu-img)
  LOAD_MAX_MIB      largest body (MiB, default 16)
  LOAD_MAX_REQUESTS stop (gracefully) after this many requests (0 = only --run-time)

Each user is one client with a user id of its own, looping over weighted tasks. Every byte a
client downloads is compared with what that client uploaded (SHA-256, or the exact slice for
a range); a difference is a failed request in Locust's statistics and counted in `mismatches`.
Routes are named by pattern ({id}), so Locust's per-route statistics are per route.
"""

import base64
import hashlib
import io
import json
import os
import random
import subprocess
import time
import uuid
import zipfile

import gevent
import gevent.pool
from locust import between, events, task
from locust.contrib.fasthttp import FastHttpUser

API = "/image-management/v1"
MIB = 1 << 20
CHUNK = 5 * MIB  # S3's smallest non-final part: chunks of exactly 5 MiB exercise that rule
MAX_MIB = int(os.environ.get("LOAD_MAX_MIB", "16"))
MAX_REQUESTS = int(os.environ.get("LOAD_MAX_REQUESTS", "0"))
POOL_IMAGES = 3  # images a user keeps at most (older ones are deleted)
POLL_DEADLINE = float(os.environ.get("LOAD_POLL_DEADLINE", "120"))

# Bytes every image is cut from: random (incompressible), made once per process. An image is
# a tag of its own followed by a slice of this, so two images never have the same bytes and a
# client can make its image again from (tag, offset, size) instead of holding it.
RANDOM = os.urandom(MAX_MIB * MIB + 8 * MIB)
QCOW2 = open(os.environ["LOAD_QCOW2"], "rb").read() if os.environ.get("LOAD_QCOW2") else b""
QCOW2_SHA256 = hashlib.sha256(QCOW2).hexdigest()

COUNTERS = {
    "requests": 0,
    "bytes_verified": 0,
    "mismatches": 0,
    "uploads_single": 0,
    "uploads_chunked_in_order": 0,
    "uploads_chunked_out_of_order": 0,
    "uploads_chunked_parallel": 0,
    "chunks": 0,
    "chunks_replaced": 0,
    "downloads": 0,
    "zips": 0,
    "ranges": 0,
    "slims": 0,
    "checks": 0,
    "deletes": 0,
    "lists": 0,
}
_stopping = False


@events.request.add_listener
def _count(**_kw):
    global _stopping
    COUNTERS["requests"] += 1
    if MAX_REQUESTS and COUNTERS["requests"] >= MAX_REQUESTS and not _stopping:
        _stopping = True
        runner = _env.runner if _env else None
        if runner is not None:
            # Users finish the task they are in (--stop-timeout), then Locust exits.
            gevent.spawn(runner.quit)


_env = None


@events.init.add_listener
def _init(environment, **_kw):
    global _env
    _env = environment


@events.quitting.add_listener
def _write_counters(**_kw):
    path = os.environ.get("LOAD_RESULT")
    if path:
        with open(path, "w") as f:
            json.dump(COUNTERS, f)


def multipart(fields, file_field, file_name, data, file_first=False):
    """A multipart/form-data body: the fields, then the file part (or the file part first)."""
    boundary = "fsload" + uuid.uuid4().hex
    text = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields
    )
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; "
        f'filename="{file_name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    part = head + data + b"\r\n"
    body = (part + text if file_first else text + part) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class Image:
    """An image a client uploaded: enough to make its bytes again."""

    def __init__(self, name, size, offset=0, tag=b"", raw=None):
        self.id = None
        self.name = name
        self.size = size
        self.offset = offset
        self.tag = tag
        self.raw = raw
        data = self.data()
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.md5 = hashlib.md5(data).hexdigest()

    @staticmethod
    def random(name, size):
        tag = uuid.uuid4().hex.encode()
        offset = random.randrange(0, len(RANDOM) - size)
        return Image(name, size, offset, tag)

    def data(self):
        if self.raw is not None:
            return self.raw
        return (self.tag + RANDOM[self.offset : self.offset + self.size - len(self.tag)])[: self.size]


class Client(FastHttpUser):
    wait_time = between(0, 0.1)
    # Several chunks of one upload go at once (greenlets sharing this user's connections).
    concurrency = 8
    network_timeout = 120.0
    connection_timeout = 30.0

    def on_start(self):
        self.user_id = f"load-{uuid.uuid4().hex[:12]}"
        self.images = []
        self.seq = 0
        self.single_upload()

    def on_stop(self):
        for img in list(self.images):
            self.delete(img)

    # ---- helpers -------------------------------------------------------------------------

    def _next(self, prefix):
        self.seq += 1
        return f"{prefix}-{self.user_id}-{self.seq}"

    def _mismatch(self, r, what):
        COUNTERS["mismatches"] += 1
        r.failure(f"MISMATCH: {what}")

    def _expect(self, r, status, what=""):
        """Marks `r` failed unless its status is `status`; returns whether it was."""
        if r.status_code != status:
            body = (r.content or b"")[:300]
            r.failure(f"{what} expected {status}, got {r.status_code}: {body!r}")
            return False
        return True

    def _json(self, r):
        try:
            return json.loads(r.content)
        except (TypeError, ValueError):
            r.failure(f"not JSON: {(r.content or b'')[:300]!r}")
            return None

    def _make_room(self):
        while len(self.images) >= POOL_IMAGES:
            self.delete(self.images[0])

    def _pick(self):
        if not self.images:
            self.single_upload()
        return random.choice(self.images) if self.images else None

    def _get_image(self, img):
        with self.client.get(
            f"{API}/images/{img.id}", name="GET /images/{id}", catch_response=True
        ) as r:
            if not self._expect(r, 200):
                return None
            v = self._json(r)
            if v is not None:
                r.success()
            return v

    def _poll(self, img, done, what):
        """GET the image until `done(view)` holds; the last view, or None (a failure)."""
        deadline = time.monotonic() + POLL_DEADLINE
        while True:
            v = self._get_image(img)
            if v is None:
                return None
            if done(v):
                return v
            if time.monotonic() > deadline:
                self.environment.events.request.fire(
                    request_type="POLL",
                    name=what,
                    response_time=POLL_DEADLINE * 1000,
                    response_length=0,
                    exception=TimeoutError(f"{what}: not done within {POLL_DEADLINE:.0f} s: {v}"),
                    context={},
                )
                return None
            gevent.sleep(0.25)

    # ---- uploads -------------------------------------------------------------------------

    @task(2)
    def single_upload(self):
        self._make_room()
        size = random.randint(MIB, MAX_MIB * MIB)
        img = Image.random(self._next("single") + random.choice([".img", ".iso"]), size)
        self._post_image(img)
        COUNTERS["uploads_single"] += 1

    def _post_image(self, img):
        body, headers = multipart(
            [("userId", self.user_id), ("priority", "0")],
            "file",
            img.name,
            img.data(),
            file_first=random.random() < 0.3,
        )
        with self.client.post(
            f"{API}/images", data=body, headers=headers, name="POST /images", catch_response=True
        ) as r:
            if not self._expect(r, 200, "upload"):
                return None
            v = self._json(r)
            if v is None:
                return None
            if v.get("fileName") != img.name or not v.get("imageId"):
                r.failure(f"upload answer: {v}")
                return None
            if v.get("sha256") and v["sha256"] != img.sha256:
                self._mismatch(r, f"upload answer sha256 {v['sha256']} != {img.sha256}")
                return None
            img.id = v["imageId"]
            self.images.append(img)
            r.success()
            return img

    @task(3)
    def chunked_upload(self):
        self._make_room()
        size = random.randint(min(CHUNK + 1, MAX_MIB * MIB), max(MAX_MIB * MIB, CHUNK + 1))
        img = Image.random(self._next("chunked") + ".img", size)
        identifier = self._next("id")
        data = img.data()
        chunks = [(i // CHUNK + 1, data[i : i + CHUNK]) for i in range(0, size, CHUNK)]
        total = len(chunks)
        declare = random.random() < 0.5  # totals and per-chunk checksums, as fsctl sends them
        mode = random.choice(["in_order", "out_of_order", "parallel"])

        def send(n, part, name="POST /images/upload"):
            fields = [("identifier", identifier), ("priority", "0")]
            if declare:
                fields += [
                    ("totalSize", str(size)),
                    ("totalChunks", str(total)),
                    ("chunkSize", str(CHUNK)),
                    ("currentChunkSize", str(len(part))),
                    ("chunkChecksum", "sha256:" + hashlib.sha256(part).hexdigest()),
                ]
            body, headers = multipart(fields, "part", f"{n}.part", part)
            with self.client.post(
                f"{API}/images/upload", data=body, headers=headers, name=name, catch_response=True
            ) as r:
                ok = self._expect(r, 200, f"chunk {n}")
                if ok and r.content.strip() != b"ok.":
                    r.failure(f"chunk {n}: {r.content[:200]!r}")
                    ok = False
                COUNTERS["chunks"] += 1
                return ok

        if mode == "in_order":
            ok = all(send(n, p) for n, p in chunks)
        elif mode == "out_of_order":
            order = chunks[:]
            random.shuffle(order)
            if order[0][0] == 1 and len(order) > 1:
                order.reverse()
            ok = True
            if not declare:
                # A chunk sent with wrong bytes first, then again: the second replaces it.
                n, p = order[0]
                ok = send(n, bytes(len(p))) and ok
                COUNTERS["chunks_replaced"] += 1
            ok = all([send(n, p) for n, p in order]) and ok
        else:
            pool = gevent.pool.Pool(3)
            ok = all(pool.map(lambda c: send(*c), chunks))
            ok = ok and self._resume_query(identifier, chunks)
        if not ok:
            return
        fields = [
            ("identifier", identifier),
            ("filename", img.name),
            ("userId", self.user_id),
            ("priority", "0"),
        ]
        if declare:
            fields += [("totalSize", str(size)), ("totalChunks", str(total))]
        if random.random() < 0.5:
            fields.append(("checksum", "sha256:" + img.sha256))
        body, headers = self._fields_only(fields)
        with self.client.post(
            f"{API}/images/merge",
            data=body,
            headers=headers,
            name="POST /images/merge",
            catch_response=True,
        ) as r:
            if not self._expect(r, 200, "merge"):
                return
            v = self._json(r)
            if v is None:
                return
            if v.get("fileName") != img.name or not v.get("imageId"):
                r.failure(f"merge answer: {v}")
                return
            img.id = v["imageId"]
            self.images.append(img)
            r.success()
        COUNTERS[f"uploads_chunked_{mode}"] += 1

    @staticmethod
    def _fields_only(fields):
        boundary = "fsload" + uuid.uuid4().hex
        body = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields
        ) + f"--{boundary}--\r\n".encode()
        return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def _resume_query(self, identifier, chunks):
        with self.client.get(
            f"{API}/images/upload?identifier={identifier}",
            name="GET /images/upload?identifier={identifier}",
            catch_response=True,
        ) as r:
            if not self._expect(r, 200, "resume query"):
                return False
            v = self._json(r)
            if v is None:
                return False
            held = sorted((c["chunkNumber"], c["size"]) for c in v.get("chunks", []))
            want = sorted((n, len(p)) for n, p in chunks)
            if held != want:
                self._mismatch(r, f"chunks held {held} != sent {want}")
                return False
            r.success()
            return True

    # ---- downloads -----------------------------------------------------------------------

    @task(4)
    def download(self):
        img = self._pick()
        if img:
            self._download(img, img.data())

    def _download(self, img, expected, name="GET /images/{id}/action/download"):
        with self.client.get(
            f"{API}/images/{img.id}/action/download",
            headers={"Accept-Encoding": "identity"},
            name=name,
            catch_response=True,
        ) as r:
            if not self._expect(r, 200, "download"):
                return None
            body = r.content or b""
            digest = hashlib.sha256(body).digest()
            if expected is not None and digest != hashlib.sha256(expected).digest():
                self._mismatch(r, f"download of {img.id}: {len(body)} bytes, sha256 {digest.hex()}")
                return None
            repr_digest = r.headers.get("Repr-Digest")
            if repr_digest and repr_digest != f"sha-256=:{base64.b64encode(digest).decode()}:":
                self._mismatch(r, f"Repr-Digest {repr_digest} does not describe the bytes served")
                return None
            COUNTERS["bytes_verified"] += len(body)
            COUNTERS["downloads"] += 1
            r.success()
            return body

    @task(1)
    def download_zip(self):
        img = self._pick()
        if not img:
            return
        with self.client.get(
            f"{API}/images/{img.id}/action/download?isZip=true",
            headers={"Accept-Encoding": "identity"},
            name="GET /images/{id}/action/download?isZip=true",
            catch_response=True,
        ) as r:
            if not self._expect(r, 200, "zip download"):
                return
            base = img.name.rsplit(".", 1)[0]
            try:
                with zipfile.ZipFile(io.BytesIO(r.content)) as z:
                    names = z.namelist()
                    if names != [f"{base}/{img.name}"]:
                        self._mismatch(r, f"zip entries {names}")
                        return
                    entry = z.read(names[0])  # also checks the entry's CRC-32
            except (zipfile.BadZipFile, OSError) as e:
                self._mismatch(r, f"zip unreadable: {e}")
                return
            if hashlib.sha256(entry).hexdigest() != img.sha256:
                self._mismatch(r, f"zip entry of {img.id}: sha256 differs")
                return
            COUNTERS["bytes_verified"] += len(entry)
            COUNTERS["zips"] += 1
            r.success()

    @task(3)
    def range_read(self):
        img = self._pick()
        if not img:
            return
        size = img.size
        form = random.choice(["a-b", "a-", "-n"])
        a = random.randrange(0, size)
        if form == "a-b":
            b = random.randrange(a, min(size, a + 2 * MIB))
            header, first, last = f"bytes={a}-{b}", a, b
        elif form == "a-":
            a = max(a, size - 2 * MIB)
            header, first, last = f"bytes={a}-", a, size - 1
        else:
            n = random.randint(1, min(size, 2 * MIB))
            header, first, last = f"bytes=-{n}", size - n, size - 1
        with self.client.get(
            f"{API}/images/{img.id}/action/download",
            headers={"Range": header, "Accept-Encoding": "identity"},
            name="GET /images/{id}/action/download [Range]",
            catch_response=True,
        ) as r:
            if not self._expect(r, 206, f"range {header}"):
                return
            want_cr = f"bytes {first}-{last}/{size}"
            if r.headers.get("Content-Range") != want_cr:
                self._mismatch(r, f"Content-Range {r.headers.get('Content-Range')} != {want_cr}")
                return
            if r.content != img.data()[first : last + 1]:
                self._mismatch(r, f"range {header} of {img.id}: bytes differ")
                return
            COUNTERS["bytes_verified"] += len(r.content)
            COUNTERS["ranges"] += 1
            r.success()

    # ---- jobs ----------------------------------------------------------------------------

    @task(1)
    def slim(self):
        """A real qcow2: upload, slim, wait for slimStatus 2, download and compare with qemu-img."""
        if not QCOW2:
            return
        self._make_room()
        img = Image(self._next("slim") + ".qcow2", len(QCOW2), raw=QCOW2)
        if not self._post_image(img):
            return
        try:
            self._slim(img)
        finally:
            # Its bytes are not the original's any more: it leaves the pool.
            self.delete(img)

    def _slim(self, img):
        with self.client.post(
            f"{API}/images/{img.id}/action/slim",
            name="POST /images/{id}/action/slim",
            catch_response=True,
        ) as r:
            if not self._expect(r, 200, "slim"):
                return
            if r.content.strip() != b"compress in progress":
                r.failure(f"slim answer: {r.content[:200]!r}")
                return
            r.success()
        v = self._poll(img, lambda v: v["slimStatus"] in (2, 3), "slim until slimStatus 2")
        if v is None:
            return
        if v["slimStatus"] != 2 or v["sha256"] == img.sha256 or v["originalSha256"] != img.sha256:
            self.environment.events.request.fire(
                request_type="POLL",
                name="slim until slimStatus 2",
                response_time=0,
                response_length=0,
                exception=AssertionError(f"slim ended: {v}"),
                context={},
            )
            return
        slimmed = self._download(img, None)
        if slimmed is None:
            return
        # The slimmed bytes are new: they must hash as the record says and hold the same
        # guest data as the original (qemu-img compare: exit 0 when identical).
        ok = hashlib.sha256(slimmed).hexdigest() == v["sha256"] and len(slimmed) < len(QCOW2)
        if ok:
            path = os.path.join(os.environ.get("LOAD_TMP", "/tmp"), f"{img.id}.qcow2")
            with open(path, "wb") as f:
                f.write(slimmed)
            try:
                cmp = subprocess.run(
                    ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", os.environ["LOAD_QCOW2"], path],
                    capture_output=True,
                    timeout=60,
                )
                ok = cmp.returncode == 0
            finally:
                os.unlink(path)
        if not ok:
            COUNTERS["mismatches"] += 1
            self.environment.events.request.fire(
                request_type="VERIFY",
                name="slimmed image: sha256 and qemu-img compare",
                response_time=0,
                response_length=len(slimmed),
                exception=AssertionError(f"MISMATCH: slimmed {img.id} differs from the original"),
                context={},
            )
            return
        COUNTERS["slims"] += 1

    @task(1)
    def check(self):
        img = self._pick()
        if not img:
            return
        with self.client.post(
            f"{API}/images/{img.id}/action/check",
            name="POST /images/{id}/action/check",
            catch_response=True,
        ) as r:
            if not self._expect(r, 200, "check"):
                return
            if r.content.strip() not in (
                b"check in progress",
                b"The image is being checked. No need to check again.",
            ):
                r.failure(f"check answer: {r.content[:200]!r}")
                return
            r.success()
        v = self._poll(img, lambda v: v["checkStatusResponse"]["status"] != 4, "check until done")
        if v is None:
            return
        c = v["checkStatusResponse"]
        # Raw and ISO images are not checked by qemu-img (5); their bytes are still hashed.
        want = 0 if img.name.endswith(".qcow2") else 5
        info = c["checkInfo"]
        if c["status"] != want or info["checksum"] != img.md5 or info["sha256"] != img.sha256:
            COUNTERS["mismatches"] += 1
            self.environment.events.request.fire(
                request_type="VERIFY",
                name="check result: status, md5 and sha256",
                response_time=0,
                response_length=0,
                exception=AssertionError(
                    f"MISMATCH: check of {img.id}: status {c['status']} (want {want}), "
                    f"md5 {info['checksum']} (want {img.md5}), sha256 {info['sha256']} (want {img.sha256})"
                ),
                context={},
            )
            return
        COUNTERS["checks"] += 1

    # ---- deletes and lists ---------------------------------------------------------------

    @task(1)
    def delete_one(self):
        if self.images:
            self.delete(random.choice(self.images))

    def delete(self, img):
        if img in self.images:
            self.images.remove(img)
        with self.client.delete(
            f"{API}/images/{img.id}", name="DELETE /images/{id}", catch_response=True
        ) as r:
            if not self._expect(r, 200, "delete"):
                return
            if r.content.strip() != b"delete success":
                r.failure(f"delete answer: {r.content[:200]!r}")
                return
            r.success()
        with self.client.get(
            f"{API}/images/{img.id}", name="GET /images/{id} (deleted: 404)", catch_response=True
        ) as r:
            if self._expect(r, 404, "deleted image"):
                r.success()
        COUNTERS["deletes"] += 1

    @task(2)
    def list_images(self):
        with self.client.get(
            f"{API}/images?userId={self.user_id}&limit=100",
            name="GET /images?userId={user}",
            catch_response=True,
        ) as r:
            if not self._expect(r, 200, "list"):
                return
            v = self._json(r)
            if v is None:
                return
            got = sorted(i["imageId"] for i in v)
            want = sorted(i.id for i in self.images)
            if got != want:
                self._mismatch(r, f"list of {self.user_id}: {got} != {want}")
                return
            COUNTERS["lists"] += 1
            r.success()
