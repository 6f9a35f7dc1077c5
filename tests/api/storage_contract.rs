//! The storage contract: the same behaviour from every `ObjectStore` implementation.

use crate::helpers::*;
use bytes::Bytes;
use file_system::storage::{ByteRange, CompletedPart, ObjectStore, PutOptions, StorageError};
use futures::StreamExt;
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

/// What a behaviour of the contract runs against: a store, a bucket in it, a scratch
/// directory, and whether parts are sent directly (`true`) or staged (`false`).
#[derive(Clone)]
pub struct Ctx {
    store: Arc<dyn ObjectStore>,
    bucket: &'static str,
    tmp: PathBuf,
    direct: bool,
}

impl Ctx {
    /// Uploads `parts` (numbered from 1) as parts of a new multipart upload of `key`, in
    /// `order`; returns the upload id and the completed parts, ascending.
    async fn upload_parts(
        &self,
        key: &str,
        parts: &[Vec<u8>],
        order: &[u32],
    ) -> (String, Vec<CompletedPart>) {
        let (store, bucket) = (&self.store, self.bucket);
        let id = store
            .create_multipart(bucket, key, &PutOptions::default())
            .await
            .unwrap();
        let mut done = vec![];
        for &n in order {
            let data = &parts[n as usize - 1];
            let etag = store
                .upload_part(
                    upload_of(bucket, key, &id),
                    part(n, spooled(&self.tmp, data), self.direct),
                )
                .await
                .unwrap();
            done.push(CompletedPart::new(n, etag, data.len() as u64));
        }
        done.sort_by_key(|p| p.number);
        (id, done)
    }

    async fn read(&self, key: &str) -> Vec<u8> {
        read_all(self.store.get(self.bucket, key, None).await.unwrap()).await
    }
}

/// Five parts of a little more than 64 KiB each, of different lengths.
fn five_parts() -> Vec<Vec<u8>> {
    (0..5)
        .map(|i| pattern(10 + i, 70_000 + i as usize * 13))
        .collect()
}

/// Buckets are made once, and asking again is harmless; a put is read back whole and by
/// range, a put replaces, a delete is idempotent and leaves `NotFound`.
pub async fn put_get_head_delete(c: Ctx) {
    let (store, bucket, opts) = (&c.store, c.bucket, PutOptions::default());
    store.ensure_bucket(bucket).await.unwrap();
    store.ensure_bucket(bucket).await.unwrap();
    let data = pattern(1, 123_457);
    let stored = store
        .put(obj(bucket, "c/one"), stream_of(data.clone()), &opts)
        .await
        .unwrap();
    assert_eq!(stored, data.len() as u64);
    assert_eq!(
        store.head(bucket, "c/one").await.unwrap(),
        Some(data.len() as u64)
    );
    assert_eq!(c.read("c/one").await, data);
    let r = ByteRange {
        start: 100,
        end: 20_099,
    };
    assert_eq!(
        read_all(store.get(bucket, "c/one", Some(r)).await.unwrap()).await,
        data[100..20_100].to_vec()
    );
    store
        .put(obj(bucket, "c/one"), stream_of(vec![7; 10]), &opts)
        .await
        .unwrap();
    assert_eq!(c.read("c/one").await, vec![7; 10]);
    store.delete(bucket, "c/one").await.unwrap();
    store.delete(bucket, "c/one").await.unwrap();
    assert_eq!(store.head(bucket, "c/one").await.unwrap(), None);
    assert!(matches!(
        store.get(bucket, "c/one", None).await.err(),
        Some(StorageError::NotFound)
    ));
    store.ping(bucket).await.unwrap();
}

/// A body that fails half way leaves nothing behind.
pub async fn failing_body_leaves_nothing(c: Ctx) {
    c.store.ensure_bucket(c.bucket).await.unwrap();
    let failing = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"abc")),
        Err(std::io::Error::other("client gone")),
    ])
    .boxed();
    assert!(matches!(
        c.store
            .put(obj(c.bucket, "c/fail"), failing, &PutOptions::default())
            .await,
        Err(StorageError::Body(_))
    ));
    assert_eq!(c.store.head(c.bucket, "c/fail").await.unwrap(), None);
}

/// A local file is stored whole and left as it was; a second one replaces the object, which
/// outlives its source file; a file that does not exist stores nothing.
pub async fn put_file_stores_a_local_file(c: Ctx) {
    let (store, bucket, opts) = (&c.store, c.bucket, PutOptions::default());
    store.ensure_bucket(bucket).await.unwrap();
    let data = pattern(4, 300_001);
    let first = c.tmp.join("first.qcow2");
    std::fs::write(&first, &data).unwrap();
    let stored = store
        .put_file(obj(bucket, "c/file"), &first, &opts)
        .await
        .unwrap();
    assert_eq!(stored, data.len() as u64);
    assert_eq!(c.read("c/file").await, data);
    assert_eq!(
        std::fs::read(&first).unwrap(),
        data,
        "the source is left as it was"
    );
    let second = c.tmp.join("second.qcow2");
    std::fs::write(&second, b"replaced").unwrap();
    store
        .put_file(obj(bucket, "c/file"), &second, &opts)
        .await
        .unwrap();
    for source in [&first, &second] {
        std::fs::remove_file(source).unwrap();
    }
    assert_eq!(c.read("c/file").await, b"replaced".to_vec());
    let missing = c.tmp.join("missing.qcow2");
    assert!(store
        .put_file(obj(bucket, "c/none"), &missing, &opts)
        .await
        .is_err());
    assert_eq!(store.head(bucket, "c/none").await.unwrap(), None);
    store.delete(bucket, "c/file").await.unwrap();
}

/// Parts in order and out of order, re-sent with other bytes of another length or of the
/// same length, join in part order; completing again is harmless.
pub async fn multipart_in_any_order(c: Ctx) {
    c.store.ensure_bucket(c.bucket).await.unwrap();
    let parts = five_parts();
    for order in [[1u32, 2, 3, 4, 5], [5, 3, 1, 4, 2], [2, 1, 4, 3, 5]] {
        let (id, mut done) = c.upload_parts("c/multi", &parts, &order).await;
        let new2 = pattern(99, 80_001);
        let new4 = pattern(98, parts[3].len());
        let resent = [(2, &new2), (4, &new4)];
        for (n, data) in resent {
            let etag = c
                .store
                .upload_part(
                    upload_of(c.bucket, "c/multi", &id),
                    part(n, spooled(&c.tmp, data), c.direct),
                )
                .await
                .unwrap();
            done[n as usize - 1] = CompletedPart::new(n, etag, data.len() as u64);
        }
        c.store
            .complete_multipart(upload_of(c.bucket, "c/multi", &id), &done)
            .await
            .unwrap();
        let want = [&parts[0], &new2, &parts[2], &new4, &parts[4]].map(|p| p.as_slice());
        let got = c.read("c/multi").await;
        assert!(
            got == want.concat(),
            "multipart order {order:?}: {} bytes vs {}",
            got.len(),
            want.concat().len()
        );
        c.store
            .complete_multipart(upload_of(c.bucket, "c/multi", &id), &done)
            .await
            .unwrap();
    }
    c.store.delete(c.bucket, "c/multi").await.unwrap();
}

/// A completion that lists a subset of the parts held (1 and 3 of 1..3) joins just those.
pub async fn multipart_completes_a_subset(c: Ctx) {
    c.store.ensure_bucket(c.bucket).await.unwrap();
    let parts = five_parts();
    let (id, mut done) = c.upload_parts("c/subset", &parts, &[1, 2, 3]).await;
    done.remove(1);
    c.store
        .complete_multipart(upload_of(c.bucket, "c/subset", &id), &done)
        .await
        .unwrap();
    assert!(c.read("c/subset").await == [parts[0].clone(), parts[2].clone()].concat());
    c.store.delete(c.bucket, "c/subset").await.unwrap();
}

/// Parts at the store's real minimum part size (S3's 5 MiB, not lowered): large parts and a
/// small last one, sent directly, join; so do parts all below the minimum, staged.
pub async fn multipart_at_the_real_minimum_part_size(c: Ctx) {
    c.store.ensure_bucket(c.bucket).await.unwrap();
    // A store without a minimum (the local one) gets parts of 1 MiB.
    let min = c.store.min_part_size().max(1 << 20) as usize;
    let large = vec![pattern(20, min + 1), pattern(21, min), pattern(22, 1000)];
    let direct = Ctx {
        direct: true,
        ..c.clone()
    };
    let (id, done) = direct.upload_parts("c/min", &large, &[2, 1, 3]).await;
    c.store
        .complete_multipart(upload_of(c.bucket, "c/min", &id), &done)
        .await
        .unwrap();
    assert!(c.read("c/min").await == large.concat());
    let small = vec![pattern(23, 4000), pattern(24, 5000), pattern(25, 10)];
    let staged = Ctx {
        direct: false,
        ..c.clone()
    };
    let (id, done) = staged.upload_parts("c/min", &small, &[3, 1, 2]).await;
    c.store
        .complete_multipart(upload_of(c.bucket, "c/min", &id), &done)
        .await
        .unwrap();
    assert!(c.read("c/min").await == small.concat());
    c.store.delete(c.bucket, "c/min").await.unwrap();
}

/// An abort drops the parts; aborting twice is fine; no object appears.
pub async fn abort_drops_the_parts(c: Ctx) {
    c.store.ensure_bucket(c.bucket).await.unwrap();
    let (id, _) = c.upload_parts("c/aborted", &[b"x".to_vec()], &[1]).await;
    for _ in 0..2 {
        c.store
            .abort_multipart(upload_of(c.bucket, "c/aborted", &id))
            .await
            .unwrap();
    }
    assert_eq!(c.store.head(c.bucket, "c/aborted").await.unwrap(), None);
}

/// A copy across keys holds the same bytes; copying nothing is `NotFound`.
pub async fn copy_across_keys(c: Ctx) {
    let (store, bucket, opts) = (&c.store, c.bucket, PutOptions::default());
    store.ensure_bucket(bucket).await.unwrap();
    let data = pattern(2, 150_001);
    store
        .put(obj(bucket, "c/src"), stream_of(data.clone()), &opts)
        .await
        .unwrap();
    store
        .copy(obj(bucket, "c/src"), obj(bucket, "c/dst"), &opts)
        .await
        .unwrap();
    assert_eq!(c.read("c/dst").await, data);
    assert!(matches!(
        store
            .copy(obj(bucket, "c/nothing"), obj(bucket, "c/x"), &opts)
            .await,
        Err(StorageError::NotFound)
    ));
    for k in ["c/src", "c/dst"] {
        store.delete(bucket, k).await.unwrap();
    }
}

/// Reads outside an object are refused when they are asked for (never a short or padded
/// stream); the last byte alone is served.
pub async fn reads_outside_an_object_are_refused(c: Ctx) {
    let (store, bucket) = (&c.store, c.bucket);
    store.ensure_bucket(bucket).await.unwrap();
    let data = pattern(5, 100_000);
    store
        .put(
            obj(bucket, "e/obj"),
            stream_of(data.clone()),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let last = data.len() as u64 - 1;
    for (start, end) in [
        (0, last + 1),
        (last, last + 10),
        (last + 1, last + 1),
        (1 << 40, (1 << 40) + 5),
    ] {
        match store
            .get(bucket, "e/obj", Some(ByteRange { start, end }))
            .await
        {
            Err(StorageError::InvalidPart(_)) => {}
            other => panic!(
                "range {start}-{end} of {} bytes: {:?}",
                data.len(),
                other.map(|_| "a stream")
            ),
        }
    }
    let range = ByteRange {
        start: last,
        end: last,
    };
    let got = read_all(store.get(bucket, "e/obj", Some(range)).await.unwrap()).await;
    assert_eq!(got, [data[last as usize]]);
    store.delete(bucket, "e/obj").await.unwrap();
}

/// An unknown upload id is `NoSuchUpload` for a part and for a completion, while aborting it
/// succeeds; no object appears.
pub async fn unknown_upload_id_is_no_such_upload(c: Ctx) {
    let (store, bucket) = (&c.store, c.bucket);
    store.ensure_bucket(bucket).await.unwrap();
    let unknown = "2f5bd1a3-6d43-4ac2-9a43-0fd6a7c1d1e0";
    // Above S3's 5 MiB minimum, so that the part goes to the (unknown) upload, not staging.
    let body = spooled(&c.tmp, &pattern(6, 6 << 20));
    let part = store
        .upload_part(upload_of(bucket, "e/up", unknown), part(1, body, true))
        .await;
    assert!(matches!(part, Err(StorageError::NoSuchUpload)), "{part:?}");
    let etag = file_system::storage::UploadedPart {
        etag: "\"x\"".into(),
        checksum: None,
        staged: false,
    };
    let done = store
        .complete_multipart(
            upload_of(bucket, "e/up", unknown),
            &[CompletedPart::new(1, etag, 1)],
        )
        .await;
    assert!(matches!(done, Err(StorageError::NoSuchUpload)), "{done:?}");
    store
        .abort_multipart(upload_of(bucket, "e/up", unknown))
        .await
        .unwrap();
    assert_eq!(store.head(bucket, "e/up").await.unwrap(), None);
}

/// Runs `qemu-img ARGS` without blocking the runtime that serves the export; its output, or
/// its error message.
async fn qemu_img(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// The `json:` description of an NBD export at `socket` opened as `driver` (qcow2 or raw).
fn nbd_image(driver: &str, socket: &Path) -> String {
    let file = serde_json::json!({ "driver": "nbd", "server": { "type": "unix", "path": socket } });
    format!(
        "json:{}",
        serde_json::json!({ "driver": driver, "file": file })
    )
}

/// A minimal NBD client: fixed newstyle, `NBD_OPT_EXPORT_NAME`, then simple requests.
struct NbdClient(tokio::net::UnixStream);

impl NbdClient {
    async fn connect(socket: &Path) -> (NbdClient, u64, u16) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::UnixStream::connect(socket).await.unwrap();
        assert_eq!(
            c.read_u64().await.unwrap(),
            0x4e42_444d_4147_4943,
            "NBDMAGIC"
        );
        assert_eq!(
            c.read_u64().await.unwrap(),
            0x4948_4156_454f_5054,
            "IHAVEOPT"
        );
        assert_eq!(
            c.read_u16().await.unwrap() & 0b11,
            0b11,
            "fixed newstyle, no zeroes"
        );
        c.write_u32(0b11).await.unwrap();
        // An option the export does not know is refused, and negotiation goes on.
        c.write_u64(0x4948_4156_454f_5054).await.unwrap();
        c.write_u32(8).await.unwrap(); // NBD_OPT_STRUCTURED_REPLY
        c.write_u32(0).await.unwrap();
        assert_eq!(c.read_u64().await.unwrap(), 0x0003_e889_0455_65a9);
        assert_eq!(c.read_u32().await.unwrap(), 8);
        assert_eq!(
            c.read_u32().await.unwrap(),
            (1 << 31) + 1,
            "NBD_REP_ERR_UNSUP"
        );
        assert_eq!(c.read_u32().await.unwrap(), 0);
        c.write_u64(0x4948_4156_454f_5054).await.unwrap();
        c.write_u32(1).await.unwrap(); // NBD_OPT_EXPORT_NAME, any name
        c.write_u32(3).await.unwrap();
        c.write_all(b"any").await.unwrap();
        let size = c.read_u64().await.unwrap();
        let flags = c.read_u16().await.unwrap();
        (NbdClient(c), size, flags)
    }

    /// Sends one request; the reply's error and the data of a successful read.
    async fn request(
        &mut self,
        kind: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> (u32, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let c = &mut self.0;
        c.write_u32(0x2560_9513).await.unwrap();
        c.write_u16(0).await.unwrap();
        c.write_u16(kind).await.unwrap();
        c.write_u64(0xc00c1e).await.unwrap();
        c.write_u64(offset).await.unwrap();
        c.write_u32(len).await.unwrap();
        c.write_all(payload).await.unwrap();
        assert_eq!(c.read_u32().await.unwrap(), 0x6744_6698, "simple reply");
        let error = c.read_u32().await.unwrap();
        assert_eq!(
            c.read_u64().await.unwrap(),
            0xc00c1e,
            "the request's cookie"
        );
        let mut data = vec![
            0;
            if error == 0 && kind == 0 {
                len as usize
            } else {
                0
            }
        ];
        c.read_exact(&mut data).await.unwrap();
        (error, data)
    }
}

/// An NBD export of a stored object (how check and slim read S3 objects in place) serves its
/// exact bytes to qemu-img and to a plain client, is read-only, refuses reads past the end,
/// outlives clients that send garbage, and leaves no socket behind.
pub async fn nbd_export(c: Ctx) {
    let (store, bucket, tmp) = (&c.store, c.bucket, c.tmp.as_path());
    use file_system::storage::nbd::Export;
    store.ensure_bucket(bucket).await.unwrap();
    let img = make_qcow2(tmp, "nbd.qcow2", 64, 18);
    let bytes = std::fs::read(&img).unwrap();
    let len = bytes.len() as u64;
    store
        .put(
            obj(bucket, "n/img"),
            stream_of(bytes.clone()),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let socket = tmp.join(format!("nbd-{}.sock", uuid::Uuid::new_v4().simple()));
    let export = Export::start(store.clone(), bucket, "n/img", len, socket.clone()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only the service's user may connect");

    qemu_img_reads_the_export(&socket, &img, &bytes, tmp).await;
    a_plain_client_reads_and_is_refused(&socket, &bytes).await;
    garbage_ends_one_connection(&socket, &bytes).await;
    drop(export);
    assert!(!socket.exists(), "the socket is removed with its export");
    assert!(tokio::net::UnixStream::connect(&socket).await.is_err());
    store.delete(bucket, "n/img").await.unwrap();
}

/// qemu-img sees the exported qcow2 `img` (its `bytes`, as stored), reads it byte for byte, and
/// cannot write to it.
async fn qemu_img_reads_the_export(socket: &Path, img: &Path, bytes: &[u8], tmp: &Path) {
    // qemu-img sees the stored qcow2, and its guest content is the original's.
    let info = qemu_img(&["info", "--output=json", &nbd_image("qcow2", socket)])
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"], 64 << 20, "{info}");
    qemu_img(&[
        "compare",
        "-F",
        "qcow2",
        &nbd_image("qcow2", socket),
        img.to_str().unwrap(),
    ])
    .await
    .unwrap();
    // Byte for byte, through qemu-img's raw driver (many reads in flight).
    let copy = tmp.join("nbd-copy.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        &nbd_image("raw", socket),
        copy.to_str().unwrap(),
    ])
    .await
    .unwrap();
    assert!(
        std::fs::read(&copy).unwrap() == bytes,
        "the export's bytes are the object's"
    );
    // Writes are refused (the export says it is read-only).
    let write = tokio::process::Command::new("qemu-io")
        .args(["-c", "write 0 4k", &nbd_image("raw", socket)])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&write.stderr).to_string()
        + &String::from_utf8_lossy(&write.stdout);
    assert!(
        !write.status.success()
            || said.contains("ermission")
            || said.contains("not permitted")
            || said.contains("read-only"),
        "{said}"
    );
}

/// A plain NBD client reads at any offset and is refused what is outside the object.
async fn a_plain_client_reads_and_is_refused(socket: &Path, bytes: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let len = bytes.len() as u64;
    // A plain client: reads at any offset, refusals for what is outside the object.
    let (mut c, size, flags) = NbdClient::connect(socket).await;
    assert_eq!(size, len);
    assert_eq!(flags & 0b11, 0b11, "has flags, read-only");
    assert_eq!(c.request(0, 0, 16, &[]).await, (0, bytes[..16].to_vec()));
    // Across the blocks the export reads the store in, forward and back.
    let block = file_system::storage::nbd::BLOCK as usize;
    assert!(
        bytes.len() > 4 * block,
        "the image spans more than four blocks"
    );
    for at in [block - 8, 3 * block - 1, block / 2, 2 * block] {
        let n = block / 2 + 100;
        assert_eq!(
            c.request(0, at as u64, n as u32, &[]).await,
            (0, bytes[at..at + n].to_vec()),
            "{at}"
        );
    }
    let tail = (len - 100) as usize;
    assert_eq!(
        c.request(0, len - 100, 100, &[]).await,
        (0, bytes[tail..].to_vec())
    );
    assert_eq!(
        c.request(0, len - 10, 100, &[]).await.0,
        22,
        "past the end: EINVAL"
    );
    assert_eq!(
        c.request(0, u64::MAX - 5, 10, &[]).await.0,
        22,
        "offset overflow: EINVAL"
    );
    assert_eq!(c.request(0, 0, 0, &[]).await.0, 22, "an empty read: EINVAL");
    assert_eq!(c.request(1, 0, 4, b"evil").await.0, 1, "a write: EPERM");
    assert_eq!(
        c.request(3, 0, 0, &[]).await.0,
        0,
        "a flush has nothing to do"
    );
    assert_eq!(
        c.request(0, 512, 8, &[]).await,
        (0, bytes[512..520].to_vec()),
        "still served"
    );
    c.0.write_u32(0x2560_9513).await.unwrap(); // NBD_CMD_DISC
    c.0.write_all(&[0, 0, 0, 2]).await.unwrap();
    c.0.write_all(&[0; 20]).await.unwrap();
    assert_eq!(
        c.0.read(&mut [0u8; 1]).await.unwrap(),
        0,
        "closed after a disconnect"
    );
}

/// Garbage at any stage ends that connection only.
async fn garbage_ends_one_connection(socket: &Path, bytes: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Garbage at any stage ends that connection only.
    for garbage in [
        &b"GET / HTTP/1.1

"[..],
        &[0xff; 4],
        &[0, 0, 0, 3, 0x49, 0x48, 0x41, 0x56],
    ] {
        let mut g = tokio::net::UnixStream::connect(socket).await.unwrap();
        let mut hello = [0u8; 18];
        g.read_exact(&mut hello).await.unwrap();
        let _ = g.write_all(garbage).await;
        let _ = g.shutdown().await;
        let mut rest = vec![];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), g.read_to_end(&mut rest))
            .await
            .expect("the export closes a garbage connection");
    }
    let (mut c, _, _) = NbdClient::connect(socket).await;
    c.0.write_all(&[0xde, 0xad, 0xbe, 0xef]).await.unwrap(); // a bad request magic
    c.0.write_all(&[0; 24]).await.unwrap();
    let mut rest = vec![];
    let _ = c.0.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "no reply to a bad request: {rest:?}");
    let (mut c, _, _) = NbdClient::connect(socket).await;
    assert_eq!(
        c.request(0, 0, 4, &[]).await,
        (0, bytes[..4].to_vec()),
        "served after garbage"
    );
}

/// An object whose length is not a multiple of 512 bytes (a truncated qcow2, one with bytes
/// after its last cluster) is exported rounded up to 512 bytes, reading zeros past its end as
/// a file does; qemu-img reads it without stalling (qemu waits for the whole rounded sector).
pub async fn nbd_export_of_unaligned_object(c: Ctx) {
    let (store, bucket, tmp) = (&c.store, c.bucket, c.tmp.as_path());
    use file_system::storage::nbd::{Export, SECTOR};
    store.ensure_bucket(bucket).await.unwrap();
    let img = make_qcow2(tmp, "odd.qcow2", 64, 19);
    let whole = std::fs::read(&img).unwrap();
    let within = |secs| std::time::Duration::from_secs(secs);
    // A qcow2 with 100 bytes after its last cluster, and one cut short inside its metadata.
    for (name, bytes) in [
        ("trailing", [&whole[..], &[7u8; 100]].concat()),
        ("truncated", whole[..100_000].to_vec()),
    ] {
        let len = bytes.len() as u64;
        assert_ne!(len % SECTOR, 0, "{name}");
        let key = format!("n/{name}");
        store
            .put(
                obj(bucket, &key),
                stream_of(bytes.clone()),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        let socket = tmp.join(format!("nbd-{}.sock", uuid::Uuid::new_v4().simple()));
        let export = Export::start(store.clone(), bucket, &key, len, socket.clone()).unwrap();
        let (mut c, size, _) = NbdClient::connect(&socket).await;
        let padded = len.next_multiple_of(SECTOR);
        assert_eq!(size, padded, "{name}");
        let (tail, pad) = (len - 10, (padded - len) as usize);
        let mut expected = bytes[tail as usize..].to_vec();
        expected.resize(10 + pad, 0);
        assert_eq!(
            c.request(0, tail, (10 + pad) as u32, &[]).await,
            (0, expected),
            "{name}: the last bytes, then zeros"
        );
        assert_eq!(
            c.request(0, padded - 1, 2, &[]).await.0,
            22,
            "{name}: EINVAL"
        );
        let check = tokio::time::timeout(
            within(30),
            qemu_img(&["check", "--output=json", &nbd_image("qcow2", &socket)]),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: qemu-img check stalled"));
        match name {
            "trailing" => assert!(check.is_ok(), "{check:?}"),
            _ => assert!(check.is_err(), "{check:?}"),
        }
        drop(export);
        store.delete(bucket, &key).await.unwrap();
    }
}

/// How often a behaviour runs on each store.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// With parts sent directly and staged and, on S3, under every `FS_S3_CHECKSUM` setting;
    /// Garage (which takes parts of any size) with a low minimum part size, so that the
    /// contract's small parts are sent directly, RGW with its own 5 MiB.
    Every,
    /// Like `Every`, at the real minimum part size on every S3 store.
    RealMinimum,
    /// Once: direct parts, no S3 checksums.
    Once,
}

/// Runs `behaviour` on a fresh local store as `runs` says, then checks that it left nothing
/// behind.
pub async fn on_local<F, Fut>(runs: Runs, behaviour: F)
where
    F: Fn(Ctx) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    let store = Arc::new(
        file_system::storage::LocalStore::open(&objects)
            .await
            .unwrap(),
    );
    let directs: &[bool] = if runs == Runs::Once {
        &[true]
    } else {
        &[true, false]
    };
    for &direct in directs {
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        behaviour(Ctx {
            store: store.clone(),
            bucket: "contract",
            tmp,
            direct,
        })
        .await;
    }
    // Nothing but the bucket directory is left.
    let left = walkdir(objects);
    assert!(left.is_empty(), "{left:?}");
}

/// Runs `behaviour` on an S3 store (under a prefix of its own) as `runs` says, then checks
/// that nothing is left under the prefix: no objects, no staging, no uploads in progress.
pub async fn on_s3<F, Fut>(server: S3Server, runs: Runs, behaviour: F)
where
    F: Fn(Ctx) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use file_system::storage::s3::S3Checksum;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("contract-{}/", uuid::Uuid::new_v4().simple());
    let checksums: &[S3Checksum] = match runs {
        Runs::Once => &[S3Checksum::Off],
        _ => &[S3Checksum::Crc32c, S3Checksum::Sha256, S3Checksum::Off],
    };
    for &checksum in checksums {
        let base = s3_settings_of(server, &prefix);
        let min_part_bytes = match (server, runs) {
            (S3Server::Garage, Runs::Every) => 64 << 10,
            _ => base.min_part_bytes,
        };
        let settings = file_system::storage::S3Settings {
            min_part_bytes,
            checksum,
            ..base
        };
        let store = Arc::new(file_system::storage::S3Store::new(settings).await.unwrap());
        let directs: &[bool] = if runs == Runs::Once {
            &[true]
        } else {
            &[true, false]
        };
        for &direct in directs {
            behaviour(Ctx {
                store: store.clone(),
                bucket: "contract",
                tmp: dir.path().to_path_buf(),
                direct,
            })
            .await;
        }
    }
    let client = s3_client_of(server).await;
    let objs = client
        .list_objects_v2()
        .bucket("contract")
        .prefix(&prefix)
        .send()
        .await
        .unwrap();
    assert!(objs.contents().is_empty(), "{:?}", objs.contents());
    let ups = client
        .list_multipart_uploads()
        .bucket("contract")
        .prefix(&prefix)
        .send()
        .await
        .unwrap();
    assert!(ups.uploads().is_empty(), "{:?}", ups.uploads());
}

/// One test per behaviour and store: `local::NAME`, `garage::NAME`, `rgw::NAME`.
macro_rules! contract_tests {
    ($($behaviour:ident: $runs:expr),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    super::on_local($runs, super::$behaviour).await
                }
            )*
        }
        mod garage {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    super::on_s3($crate::helpers::S3Server::Garage, $runs, super::$behaviour)
                        .await
                }
            )*
        }
        mod rgw {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    super::on_s3($crate::helpers::S3Server::Rgw, $runs, super::$behaviour).await
                }
            )*
        }
    };
}

contract_tests! {
    put_get_head_delete: super::Runs::Every,
    failing_body_leaves_nothing: super::Runs::Every,
    put_file_stores_a_local_file: super::Runs::Once,
    multipart_in_any_order: super::Runs::Every,
    multipart_completes_a_subset: super::Runs::Every,
    multipart_at_the_real_minimum_part_size: super::Runs::RealMinimum,
    abort_drops_the_parts: super::Runs::Every,
    copy_across_keys: super::Runs::Every,
    reads_outside_an_object_are_refused: super::Runs::Every,
    unknown_upload_id_is_no_such_upload: super::Runs::Once,
    nbd_export: super::Runs::Once,
    nbd_export_of_unaligned_object: super::Runs::Once,
}

/// The local store takes a file on its own file system without copying it (the object is the
/// same inode), and copies one from another file system (tmpfs).
#[tokio::test]
async fn local_put_file_links_on_the_same_file_system() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = file_system::storage::LocalStore::open(dir.path().join("objects"))
        .await
        .unwrap();
    store.ensure_bucket("b").await.unwrap();
    let opts = PutOptions::default();
    let same = dir.path().join("out.qcow2");
    std::fs::write(&same, pattern(8, 70_000)).unwrap();
    store.put_file(obj("b", "k1"), &same, &opts).await.unwrap();
    let object = store.local_path("b", "k1").unwrap();
    let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&same), ino(&object), "linked, not copied");
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let dev = |p: &std::path::Path| std::fs::metadata(p).unwrap().dev();
    assert_ne!(
        dev(shm.path()),
        dev(dir.path()),
        "/dev/shm is another file system"
    );
    let other = shm.path().join("out.qcow2");
    std::fs::write(&other, pattern(9, 70_000)).unwrap();
    store.put_file(obj("b", "k2"), &other, &opts).await.unwrap();
    let copied = store.local_path("b", "k2").unwrap();
    assert_ne!(ino(&other), ino(&copied));
    assert_eq!(std::fs::read(&copied).unwrap(), pattern(9, 70_000));
}

/// Keys cannot climb out of the local store.
#[tokio::test]
async fn local_keys_stay_inside_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_system::storage::LocalStore::open(dir.path().join("objects"))
        .await
        .unwrap();
    for key in ["../x", "/etc/passwd", "a/../../b"] {
        assert!(store.head("contract", key).await.is_err(), "{key}");
    }
    assert!(store.head("..", "x").await.is_err());
}

fn walkdir(p: std::path::PathBuf) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(&p) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walkdir(e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// A completion killed after it published the joined parts (renamed them into place) but
/// before it removed their directory: completing again finishes the cleanup and keeps the
/// object; with the object gone too, it fails, never publishing an empty or zeroed file.
#[tokio::test]
async fn local_completion_killed_after_publishing_is_finished_safely() {
    use file_system::storage::{CompletedPart, LocalStore, ObjectStore, PutOptions};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let store = LocalStore::open(&root).await.unwrap();
    store.ensure_bucket("b").await.unwrap();
    for key in ["kept", "lost"] {
        let id = store
            .create_multipart("b", key, &PutOptions::default())
            .await
            .unwrap();
        let mut parts = vec![];
        for (n, data) in [(1u32, b"abc"), (2, b"def")] {
            let etag = store
                .upload_part(
                    upload_of("b", key, &id),
                    part(n, spooled(dir.path(), data), true),
                )
                .await
                .unwrap();
            parts.push(CompletedPart::new(n, etag, 3));
        }
        // What the killed completion did: the joined parts are the object now.
        let data = root.join(".uploads").join(&id).join("data");
        std::fs::rename(&data, root.join("b").join(key)).unwrap();
        if key == "lost" {
            std::fs::remove_file(root.join("b").join(key)).unwrap();
            assert!(store
                .complete_multipart(upload_of("b", key, &id), &parts)
                .await
                .is_err());
            assert!(store.head("b", key).await.unwrap().is_none());
            store
                .abort_multipart(upload_of("b", key, &id))
                .await
                .unwrap();
            continue;
        }
        store
            .complete_multipart(upload_of("b", key, &id), &parts)
            .await
            .unwrap();
        assert_eq!(
            read_all(store.get("b", key, None).await.unwrap()).await,
            b"abcdef"
        );
        assert!(!root.join(".uploads").join(&id).exists());
    }
}

/// Parts received straight into their place in a local upload (`part_in_place`): only the part
/// that extends the run gets a writer, one writer at a time; a part stored the usual way waits
/// for the writer; bytes a writer left without committing are never part of the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_parts_received_in_place() {
    use file_system::storage::{LocalStore, ObjectStore, PutOptions};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path().join("objects")).await.unwrap());
    store.ensure_bucket("b").await.unwrap();
    let id = store
        .create_multipart("b", "k", &PutOptions::default())
        .await
        .unwrap();
    let up = || upload_of("b", "k", &id);
    let parts = five_parts();
    let mut done = vec![];
    let commit = |p: file_system::storage::UploadedPart, n: u32| {
        CompletedPart::new(n, p, parts[n as usize - 1].len() as u64)
    };
    // Only part 1 extends the (empty) run.
    assert!(store.part_in_place(up(), 2).await.unwrap().is_none());
    let mut w = store.part_in_place(up(), 1).await.unwrap().unwrap();
    assert_eq!(w.target(), (id.as_str(), 1));
    // One writer at a time.
    assert!(store.part_in_place(up(), 1).await.unwrap().is_none());
    assert_eq!(
        w.receive(stream_of(parts[0].clone())).await.ok(),
        Some(parts[0].len() as u64)
    );
    assert_eq!(read_all(w.read_back().unwrap()).await, parts[0]);
    done.push(commit(w.commit().await.unwrap(), 1));
    // Part 3 arrives early and waits aside; part 2, received in place, absorbs it.
    let third = store
        .upload_part(up(), part(3, spooled(dir.path(), &parts[2]), true))
        .await
        .unwrap();
    let mut w = store.part_in_place(up(), 2).await.unwrap().unwrap();
    w.receive(stream_of(parts[1].clone())).await.ok().unwrap();
    // Part 2 sent again the usual way meanwhile: it does not wait for the writer (whose
    // client may be slow); the writer, committing last, is kept.
    let again = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        store.upload_part(up(), part(2, spooled(dir.path(), &pattern(99, 5000)), true)),
    )
    .await
    .expect("waited for the writer");
    again.unwrap();
    done.push(commit(w.commit().await.unwrap(), 2));
    done.push(commit(third, 3));
    completion_does_not_wait_for_a_writer(&store, dir.path(), &parts).await;
    // A writer for part 4 dropped after writing more than part 4 will hold: not a part.
    let mut w = store.part_in_place(up(), 4).await.unwrap().unwrap();
    w.receive(stream_of(vec![0xee; 300_000]))
        .await
        .ok()
        .unwrap();
    drop(w);
    let mut w = store.part_in_place(up(), 4).await.unwrap().unwrap();
    w.receive(stream_of(parts[3].clone())).await.ok().unwrap();
    done.push(commit(w.commit().await.unwrap(), 4));
    // Another dropped writer (part 5) whose bytes lie after part 4 when the upload completes.
    let mut w = store.part_in_place(up(), 5).await.unwrap().unwrap();
    w.receive(stream_of(vec![0xdd; 1000])).await.ok().unwrap();
    drop(w);
    store.complete_multipart(up(), &done).await.unwrap();
    assert_eq!(
        read_all(store.get("b", "k", None).await.unwrap()).await,
        parts[..4].concat()
    );
    // The upload is gone: no writer for it.
    assert!(store.part_in_place(up(), 5).await.unwrap().is_none());
}

/// A local upload completed while a writer receives a part in place: the completion copies
/// the parts, never waits, and the writer's bytes are not in the object; the writer's commit
/// then finds its upload gone.
async fn completion_does_not_wait_for_a_writer(
    store: &file_system::storage::LocalStore,
    dir: &std::path::Path,
    parts: &[Vec<u8>],
) {
    use file_system::storage::{ObjectStore, PutOptions};
    let other = store
        .create_multipart("b", "k2", &PutOptions::default())
        .await
        .unwrap();
    let up2 = || upload_of("b", "k2", &other);
    let p1 = store
        .upload_part(up2(), part(1, spooled(dir, &parts[0]), true))
        .await
        .unwrap();
    let mut w2 = store.part_in_place(up2(), 2).await.unwrap().unwrap();
    w2.receive(stream_of(vec![0xcc; 9000])).await.ok().unwrap();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        store.complete_multipart(up2(), &[CompletedPart::new(1, p1, parts[0].len() as u64)]),
    )
    .await
    .expect("waited for the writer")
    .unwrap();
    assert_eq!(
        read_all(store.get("b", "k2", None).await.unwrap()).await,
        parts[0]
    );
    // The writer's upload is gone: its commit says so.
    assert!(matches!(
        w2.commit().await,
        Err(file_system::storage::StorageError::NoSuchUpload)
    ));
}

/// An upload's directory is removed by moving it into `.tmp` first: one left there by a
/// process killed while removing it is gone when the store opens again, as are temp files.
#[tokio::test]
async fn local_open_removes_what_a_killed_process_left_in_tmp() {
    use file_system::storage::LocalStore;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    drop(LocalStore::open(&root).await.unwrap());
    let half_removed = root.join(".tmp").join("0b3c9d1e-upload");
    std::fs::create_dir_all(&half_removed).unwrap();
    std::fs::write(half_removed.join("00003.part"), b"abc").unwrap();
    std::fs::write(root.join(".tmp").join("put-in-flight"), b"def").unwrap();
    let _store = LocalStore::open(&root).await.unwrap();
    assert!(walkdir(root.join(".tmp")).is_empty());
    assert_eq!(std::fs::read_dir(root.join(".tmp")).unwrap().count(), 0);
}
