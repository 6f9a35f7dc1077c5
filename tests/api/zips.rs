//! Zip uploads: exactly one image inside a folder; unsafe or surprising archives are refused
//! with 400 and leave nothing behind.

use crate::helpers::*;

async fn zip_upload_stores_the_inner_image(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let img = make_qcow2(app.dir.path(), "myimg.qcow2", 32, 2);
    let zip = app.dir.path().join("myimg.zip");
    python_zip(
        &zip,
        &format!(
            "z.writestr('myimg/', '')\nz.write({:?}, 'myimg/myimg.qcow2')\nz.writestr('myimg/README.txt', 'notes')",
            img.to_str().unwrap()
        ),
    );
    let resp = app.upload_path(&zip, "myimg.zip", &[("userId", "z")]).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["fileName"], "myimg.qcow2");
    let id = v["imageId"].as_str().unwrap();
    let dl = app
        .client
        .get(app.url(&format!("/images/{id}/action/download")))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&dl.bytes().await.unwrap()), sha256_file(&img));
    // Only the image is stored; the uploaded archive is gone from scratch.
    assert_eq!(
        app.leftovers().await.len(),
        1,
        "{:?}",
        app.leftovers().await
    );
    app.stop().await;
}

async fn unsafe_or_wrong_archives_are_refused(b: Backend) {
    let limit = 4u64 << 20;
    let app = TestApp::spawn(
        b,
        Options {
            max_image_bytes: Some(limit),
            ..Default::default()
        },
    )
    .await;
    let cases: Vec<(&str, String)> = vec![
        ("no image", "z.writestr('dir/readme.txt', 'x')".into()),
        ("empty", String::new()),
        ("two images", "z.writestr('d/a.qcow2', 'a')\nz.writestr('d/b.img', 'b')".into()),
        ("parent dir", "z.writestr('../evil.qcow2', 'x')".into()),
        ("nested parent", "z.writestr('d/../../evil.qcow2', 'x')".into()),
        ("absolute", "z.writestr('/etc/evil.qcow2', 'x')".into()),
        ("not in a folder", "z.writestr('root.qcow2', 'x')".into()),
        (
            "symlink",
            "i = zipfile.ZipInfo('d/link.qcow2')\ni.create_system = 3\ni.external_attr = (0o120777 << 16)\nz.writestr(i, '/etc/passwd')".into(),
        ),
        (
            "link beside the image",
            "z.writestr('d/a.qcow2', 'a')\ni = zipfile.ZipInfo('d/l')\ni.create_system = 3\ni.external_attr = (0o120777 << 16)\nz.writestr(i, '/etc')".into(),
        ),
        ("bad inner name", "z.writestr('d/a.QCOW2', 'a')".into()),
        // One name twice: the zip crate would keep the last, Java's streaming reader the first.
        (
            "same name twice",
            "import warnings\nwarnings.simplefilter('ignore')\nz.writestr('d/a.qcow2', 'a')\nz.writestr('d/a.qcow2', 'b')".into(),
        ),
        // Deflated zeros that expand past the limit (declared size honest).
        ("bomb", format!("z.writestr('d/big.img', b'\\0' * {})", limit + 1)),
    ];
    for (what, script) in cases {
        let zip = app.dir.path().join("case.zip");
        python_zip(&zip, &script);
        let resp = app.upload_path(&zip, "case.zip", &[]).await;
        let v = assert_error(resp, 400, None).await;
        assert_eq!(v["code"], "INVALID_ZIP", "{what}: {v}");
        assert!(
            app.leftovers().await.is_empty(),
            "{what}: left {:?}",
            app.leftovers().await
        );
    }
    // An entry whose header lies about its size: patch the declared sizes of a deflated entry.
    let zip = app.dir.path().join("liar.zip");
    python_zip(
        &zip,
        &format!("z.writestr('d/big.img', b'\\0' * {})", limit * 2),
    );
    let mut bytes = std::fs::read(&zip).unwrap();
    let small = 1000u32.to_le_bytes();
    // Local header sizes at 18..26; central directory entry sizes at +20..+28.
    bytes[22..26].copy_from_slice(&small);
    let cd = bytes
        .windows(4)
        .rposition(|w| w == [0x50, 0x4b, 0x01, 0x02])
        .unwrap();
    bytes[cd + 24..cd + 28].copy_from_slice(&small);
    let resp = app.upload("liar.zip", bytes, &[]).await;
    let v = assert_error(resp, 400, None).await;
    assert_eq!(v["code"], "INVALID_ZIP", "{v}");
    // Not a zip at all.
    let resp = app.upload("junk.zip", pattern(5, 5000), &[]).await;
    assert_error(resp, 400, None).await;
    assert!(
        app.leftovers().await.is_empty(),
        "left {:?}",
        app.leftovers().await
    );
    app.stop().await;
}

/// Archives as common tools write them: macOS Finder adds `__MACOSX/` AppleDouble files and
/// `.DS_Store`; some Windows tools write `\` as the separator. Metadata is ignored (never
/// stored, never counted), `\` is a separator, and the image is stored.
async fn archives_from_common_tools_are_accepted(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let img = pattern(21, 3 << 20);
    std::fs::write(app.dir.path().join("img.bin"), &img).unwrap();
    let src = app.dir.path().join("img.bin");
    let cases = [
        (
            "finder",
            "z.writestr('myimg/', '')\nz.write(SRC, 'myimg/myimg.img')\n\
             z.writestr('__MACOSX/', '')\nz.writestr('__MACOSX/myimg/', '')\n\
             z.writestr('__MACOSX/myimg/._myimg.img', b'\\0\\5\\x16\\7' + bytes(4000))\n\
             z.writestr('myimg/.DS_Store', bytes(6148))\nz.writestr('myimg/._other.qcow2', b'x')",
        ),
        ("backslash", "z.write(SRC, 'myimg\\\\myimg.img')"),
    ];
    for (what, script) in cases {
        let zip = app.dir.path().join(format!("{what}.zip"));
        python_zip(
            &zip,
            &script.replace("SRC", &format!("{:?}", src.to_str().unwrap())),
        );
        let resp = app.upload_path(&zip, "myimg.zip", &[]).await;
        assert_eq!(resp.status(), 200, "{what}: {}", resp.text().await.unwrap());
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["fileName"], "myimg.img", "{what}");
        let id = v["imageId"].as_str().unwrap();
        assert_eq!(sha256(&app.download(id).await), sha256(&img), "{what}");
        let r = app.delete_image(id).await;
        assert_eq!(r.status(), 200);
    }
    assert!(
        app.leftovers().await.is_empty(),
        "{:?}",
        app.leftovers().await
    );
    app.stop().await;
}

/// Sets the declared uncompressed size (and optionally the CRC-32) of the first entry in both
/// its local header and its central directory record.
fn patch_declared(bytes: &mut [u8], size: u32, crc: Option<u32>) {
    bytes[22..26].copy_from_slice(&size.to_le_bytes());
    let cd = bytes
        .windows(4)
        .rposition(|w| w == [0x50, 0x4b, 0x01, 0x02])
        .unwrap();
    bytes[cd + 24..cd + 28].copy_from_slice(&size.to_le_bytes());
    if let Some(c) = crc {
        bytes[14..18].copy_from_slice(&c.to_le_bytes());
        bytes[cd + 16..cd + 20].copy_from_slice(&c.to_le_bytes());
    }
}

/// Archives whose entry is not what they declare, or that expand beyond a zip bomb's ratio
/// while staying under the size limit: 400, nothing stored.
async fn lying_archives_and_bombs_are_refused(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let data = app.dir.path().join("data.bin");
    std::fs::write(&data, pattern(3, 8 << 20)).unwrap();
    let d = format!("{:?}", data.to_str().unwrap());
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![];
    // Declares 64 KiB, inflates to 8 MiB (CRC of the whole data kept).
    let zip = app.dir.path().join("a.zip");
    python_zip(&zip, &format!("z.write({d}, 'd/disk.img')"));
    let mut bytes = std::fs::read(&zip).unwrap();
    patch_declared(&mut bytes, 64 << 10, None);
    cases.push(("declared smaller", bytes, "declares"));
    // Declares more than it holds.
    let mut bytes = std::fs::read(&zip).unwrap();
    patch_declared(&mut bytes, (8 << 20) + 5, None);
    cases.push(("declared larger", bytes, "declared size"));
    // Right size, wrong CRC.
    let mut bytes = std::fs::read(&zip).unwrap();
    patch_declared(&mut bytes, 8 << 20, Some(0x1234_5678));
    cases.push(("wrong crc", bytes, "CRC"));
    // Bombs under the (default, 500 GiB) size limit: deflated zeros (about 1030:1) and bzip2
    // (far beyond), with honest headers.
    let zip = app.dir.path().join("b.zip");
    python_zip(&zip, "z.writestr('d/zeros.img', bytes(64 << 20))");
    cases.push(("deflate bomb", std::fs::read(&zip).unwrap(), "zip bomb"));
    let zip = app.dir.path().join("c.zip");
    python_zip(
        &zip,
        "z.writestr(zipfile.ZipInfo('d/zeros.img'), bytes(64 << 20), compress_type=zipfile.ZIP_BZIP2)",
    );
    cases.push(("bzip2 bomb", std::fs::read(&zip).unwrap(), "zip bomb"));
    // Too many entries to list: refused from the end record, before the listing, also when
    // the count is in the zip64 record.
    for (what, n) in [("many entries", 10_001), ("zip64 count", 70_000)] {
        let zip = app.dir.path().join(format!("{n}.zip"));
        python_zip(
            &zip,
            &format!("for i in range({n}): z.writestr(f'd/{{i}}', '')"),
        );
        let says: &'static str = Box::leak(format!("holds {n} entries").into_boxed_str());
        cases.push((what, std::fs::read(&zip).unwrap(), says));
    }
    for (what, bytes, says) in cases {
        let resp = app.upload("x.zip", bytes, &[]).await;
        let v = assert_error(resp, 400, None).await;
        assert_eq!(v["code"], "INVALID_ZIP", "{what}: {v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{what}: {v}");
        assert!(
            app.leftovers().await.is_empty(),
            "{what}: {:?}",
            app.leftovers().await
        );
    }
    // Traversal in backslash spellings is still refused.
    for name in [
        "..\\\\evil.img",
        "d\\\\..\\\\..\\\\evil.img",
        "C:\\\\d\\\\evil.img",
        "\\\\d\\\\evil.img",
    ] {
        let zip = app.dir.path().join("t.zip");
        python_zip(&zip, &format!("z.writestr('{name}', b'x')"));
        let v = assert_error(app.upload_path(&zip, "t.zip", &[]).await, 400, None).await;
        assert_eq!(v["code"], "INVALID_ZIP", "{name}: {v}");
    }
    assert!(
        app.leftovers().await.is_empty(),
        "{:?}",
        app.leftovers().await
    );
    app.stop().await;
}

crate::backend_tests!(
    zip_upload_stores_the_inner_image,
    unsafe_or_wrong_archives_are_refused,
    archives_from_common_tools_are_accepted,
    lying_archives_and_bombs_are_refused
);
