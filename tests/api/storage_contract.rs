//! The storage contract: the same behaviour from every `ObjectStore` implementation.

use crate::helpers::*;
use bytes::Bytes;
use file_system::storage::{
    ByteRange, ByteStream, CompletedPart, ObjectStore, PutOptions, SpooledPart, StorageError,
};
use futures::StreamExt;
use std::sync::Arc;

fn stream_of(data: Vec<u8>) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(10_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

async fn read_all(s: ByteStream) -> Vec<u8> {
    s.map(|c| c.unwrap().to_vec())
        .collect::<Vec<_>>()
        .await
        .concat()
}

fn spooled(dir: &std::path::Path, data: &[u8]) -> SpooledPart {
    let mut f = tempfile::NamedTempFile::new_in(dir).unwrap();
    std::io::Write::write_all(&mut f, data).unwrap();
    SpooledPart {
        file: f.into_temp_path(),
        len: data.len() as u64,
    }
}

/// Runs the whole contract against `store`, using bucket `bucket` and scratch dir `tmp`.
pub async fn contract(
    store: Arc<dyn ObjectStore>,
    bucket: &str,
    tmp: &std::path::Path,
    direct: bool,
) {
    store.ensure_bucket(bucket).await.unwrap();
    store.ensure_bucket(bucket).await.unwrap();
    let opts = PutOptions::default();

    // put / head / get / ranged get / delete
    let data = pattern(1, 123_457);
    assert_eq!(
        store
            .put(bucket, "c/one", stream_of(data.clone()), &opts)
            .await
            .unwrap(),
        data.len() as u64
    );
    assert_eq!(
        store.head(bucket, "c/one").await.unwrap(),
        Some(data.len() as u64)
    );
    assert_eq!(
        read_all(store.get(bucket, "c/one", None).await.unwrap()).await,
        data
    );
    let r = ByteRange {
        start: 100,
        end: 20_099,
    };
    assert_eq!(
        read_all(store.get(bucket, "c/one", Some(r)).await.unwrap()).await,
        data[100..20_100].to_vec()
    );
    // put replaces
    store
        .put(bucket, "c/one", stream_of(vec![7; 10]), &opts)
        .await
        .unwrap();
    assert_eq!(
        read_all(store.get(bucket, "c/one", None).await.unwrap()).await,
        vec![7; 10]
    );
    store.delete(bucket, "c/one").await.unwrap();
    store.delete(bucket, "c/one").await.unwrap();
    assert_eq!(store.head(bucket, "c/one").await.unwrap(), None);
    assert!(matches!(
        store.get(bucket, "c/one", None).await.err(),
        Some(StorageError::NotFound)
    ));

    // A failing body leaves nothing behind.
    let failing = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"abc")),
        Err(std::io::Error::other("client gone")),
    ])
    .boxed();
    assert!(matches!(
        store.put(bucket, "c/fail", failing, &opts).await,
        Err(StorageError::Body(_))
    ));
    assert_eq!(store.head(bucket, "c/fail").await.unwrap(), None);

    // Multipart in order, out of order, with a re-sent part of another length.
    let parts: Vec<Vec<u8>> = (0..5)
        .map(|i| pattern(10 + i, 70_000 + i as usize * 13))
        .collect();
    for order in [
        vec![1u32, 2, 3, 4, 5],
        vec![5, 3, 1, 4, 2],
        vec![2, 1, 4, 3, 5],
    ] {
        let id = store
            .create_multipart(bucket, "c/multi", &opts)
            .await
            .unwrap();
        let mut done = vec![];
        for &n in &order {
            let etag = store
                .upload_part(
                    bucket,
                    "c/multi",
                    &id,
                    n,
                    spooled(tmp, &parts[n as usize - 1]),
                    direct,
                )
                .await
                .unwrap();
            done.push(CompletedPart::new(
                n,
                etag,
                parts[n as usize - 1].len() as u64,
            ));
        }
        // Re-send part 2 with other bytes of another length, then part 4 with the same length.
        let new2 = pattern(99, 80_001);
        let e2 = store
            .upload_part(bucket, "c/multi", &id, 2, spooled(tmp, &new2), direct)
            .await
            .unwrap();
        let new4 = pattern(98, parts[3].len());
        let e4 = store
            .upload_part(bucket, "c/multi", &id, 4, spooled(tmp, &new4), direct)
            .await
            .unwrap();
        done.retain(|p| p.number != 2 && p.number != 4);
        done.push(CompletedPart::new(2, e2, new2.len() as u64));
        done.push(CompletedPart::new(4, e4, new4.len() as u64));
        done.sort_by_key(|p| p.number);
        store
            .complete_multipart(bucket, "c/multi", &id, &done)
            .await
            .unwrap();
        let want = [
            parts[0].clone(),
            new2,
            parts[2].clone(),
            new4,
            parts[4].clone(),
        ]
        .concat();
        let got = read_all(store.get(bucket, "c/multi", None).await.unwrap()).await;
        assert!(
            got == want,
            "multipart order {order:?}: {} bytes vs {}",
            got.len(),
            want.len()
        );
        // Completing again is harmless.
        store
            .complete_multipart(bucket, "c/multi", &id, &done)
            .await
            .unwrap();
    }
    // Completing a subset (parts 1 and 3 only).
    let id = store
        .create_multipart(bucket, "c/subset", &opts)
        .await
        .unwrap();
    let mut done = vec![];
    for n in 1..=3u32 {
        let etag = store
            .upload_part(
                bucket,
                "c/subset",
                &id,
                n,
                spooled(tmp, &parts[n as usize - 1]),
                direct,
            )
            .await
            .unwrap();
        done.push(CompletedPart::new(
            n,
            etag,
            parts[n as usize - 1].len() as u64,
        ));
    }
    done.remove(1);
    store
        .complete_multipart(bucket, "c/subset", &id, &done)
        .await
        .unwrap();
    let got = read_all(store.get(bucket, "c/subset", None).await.unwrap()).await;
    assert!(got == [parts[0].clone(), parts[2].clone()].concat());

    // Abort drops the parts; aborting twice is fine.
    let id = store
        .create_multipart(bucket, "c/aborted", &opts)
        .await
        .unwrap();
    store
        .upload_part(bucket, "c/aborted", &id, 1, spooled(tmp, b"x"), direct)
        .await
        .unwrap();
    store
        .abort_multipart(bucket, "c/aborted", &id)
        .await
        .unwrap();
    store
        .abort_multipart(bucket, "c/aborted", &id)
        .await
        .unwrap();
    assert_eq!(store.head(bucket, "c/aborted").await.unwrap(), None);

    // Copy across keys.
    store
        .put(bucket, "c/src", stream_of(data.clone()), &opts)
        .await
        .unwrap();
    store
        .copy(bucket, "c/src", bucket, "c/dst", &opts)
        .await
        .unwrap();
    assert_eq!(
        read_all(store.get(bucket, "c/dst", None).await.unwrap()).await,
        data
    );
    assert!(matches!(
        store.copy(bucket, "c/nothing", bucket, "c/x", &opts).await,
        Err(StorageError::NotFound)
    ));
    for k in ["c/src", "c/dst", "c/multi", "c/subset"] {
        store.delete(bucket, k).await.unwrap();
    }
    store.ping(bucket).await.unwrap();
}

/// The edges of the contract, the same on every store: reads outside an object are refused
/// when they are asked for (never a short or padded stream), and an unknown upload id is
/// `NoSuchUpload` for parts and completion, while aborting it succeeds.
pub async fn contract_edges(store: Arc<dyn ObjectStore>, bucket: &str, tmp: &std::path::Path) {
    store.ensure_bucket(bucket).await.unwrap();
    let data = pattern(5, 100_000);
    store
        .put(
            bucket,
            "e/obj",
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
    let got = read_all(
        store
            .get(
                bucket,
                "e/obj",
                Some(ByteRange {
                    start: last,
                    end: last,
                }),
            )
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got, [data[last as usize]]);
    let unknown = "2f5bd1a3-6d43-4ac2-9a43-0fd6a7c1d1e0";
    // Above S3's 5 MiB minimum, so that the part goes to the (unknown) upload, not staging.
    let part = store
        .upload_part(
            bucket,
            "e/up",
            unknown,
            1,
            spooled(tmp, &pattern(6, 6 << 20)),
            true,
        )
        .await;
    assert!(matches!(part, Err(StorageError::NoSuchUpload)), "{part:?}");
    let done = store
        .complete_multipart(
            bucket,
            "e/up",
            unknown,
            &[CompletedPart::new(
                1,
                file_system::storage::UploadedPart {
                    etag: "\"x\"".into(),
                    checksum: None,
                },
                1,
            )],
        )
        .await;
    assert!(matches!(done, Err(StorageError::NoSuchUpload)), "{done:?}");
    store
        .abort_multipart(bucket, "e/up", unknown)
        .await
        .unwrap();
    assert_eq!(store.head(bucket, "e/up").await.unwrap(), None);
    store.delete(bucket, "e/obj").await.unwrap();
}

#[tokio::test]
async fn local_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        file_system::storage::LocalStore::open(dir.path().join("objects"))
            .await
            .unwrap(),
    );
    contract(store.clone(), "contract", dir.path(), true).await;
    contract(store.clone(), "contract", dir.path(), false).await;
    contract_edges(store, "contract", dir.path()).await;
    // Nothing but the bucket directory is left.
    let mut left = vec![];
    for e in walkdir(dir.path().join("objects")) {
        left.push(e);
    }
    assert!(left.is_empty(), "{left:?}");
    // Keys cannot climb out of the store.
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

async fn s3_store_contract(b: Backend) {
    let server = b.s3_server().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("contract-{}/", uuid::Uuid::new_v4().simple());
    // Every FS_S3_CHECKSUM setting: the store verifies what it receives, and completions
    // hand each part's checksum back.
    use file_system::storage::s3::S3Checksum;
    for checksum in [S3Checksum::Crc32c, S3Checksum::Sha256, S3Checksum::Off] {
        let base = s3_settings_of(server, &prefix);
        let settings = file_system::storage::S3Settings {
            // Garage takes parts of any size: a low minimum sends the contract's parts
            // directly. RGW keeps its own 5 MiB: they are staged and packed.
            min_part_bytes: match server {
                S3Server::Garage => 64 << 10,
                S3Server::Rgw => base.min_part_bytes,
            },
            checksum,
            ..base
        };
        let store = Arc::new(file_system::storage::S3Store::new(settings).await.unwrap());
        contract(store.clone(), "contract", dir.path(), true).await;
        contract(store.clone(), "contract", dir.path(), false).await;
        contract_edges(store, "contract", dir.path()).await;
    }
    // Nothing is left under the prefix: no objects, no staging, no uploads in progress.
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

crate::s3_server_tests!(s3_store_contract);

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
                .upload_part("b", key, &id, n, spooled(dir.path(), data), true)
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
                .complete_multipart("b", key, &id, &parts)
                .await
                .is_err());
            assert!(store.head("b", key).await.unwrap().is_none());
            store.abort_multipart("b", key, &id).await.unwrap();
            continue;
        }
        store
            .complete_multipart("b", key, &id, &parts)
            .await
            .unwrap();
        assert_eq!(
            read_all(store.get("b", key, None).await.unwrap()).await,
            b"abcdef"
        );
        assert!(!root.join(".uploads").join(&id).exists());
    }
}
