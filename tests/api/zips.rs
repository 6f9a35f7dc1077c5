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

crate::backend_tests!(
    zip_upload_stores_the_inner_image,
    unsafe_or_wrong_archives_are_refused
);
