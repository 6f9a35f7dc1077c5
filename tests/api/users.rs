//! Ownership with authentication on (`FS_AUTH=token`): every image and upload session belongs
//! to its user; another user's image id or identifier gets the answer a missing one gets, and
//! nothing changes; an admin sees and manages everything and may act for a user.

use crate::{
    auth::{client_with, token_line},
    helpers::*,
};
use reqwest::{header, multipart, Client};

/// Static API tokens of the tests' users: (token, user, role).
const USERS: [(&str, &str, &str); 3] = [
    ("alice-token-0123456789", "alice", "user"),
    ("bob-token-0123456789", "bob", "user"),
    ("root-token-0123456789", "root", "admin"),
];

/// A server with token authentication, and one HTTP client per user (alice, bob, root).
pub struct Users {
    pub app: TestApp,
    pub alice: Client,
    pub bob: Client,
    pub root: Client,
    _tokens: tempfile::TempDir,
}

impl Users {
    pub async fn spawn(b: Backend, mut opts: Options) -> Users {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        let lines: String = USERS.iter().map(|(t, u, r)| token_line(t, u, r)).collect();
        std::fs::write(&file, format!("# test users\n{lines}")).unwrap();
        opts.env.push(("FS_AUTH", "token".into()));
        opts.env
            .push(("FS_AUTH_TOKENS_FILE", file.display().to_string()));
        let app = TestApp::spawn(b, opts).await;
        Users {
            app,
            alice: client_with(USERS[0].0),
            bob: client_with(USERS[1].0),
            root: client_with(USERS[2].0),
            _tokens: dir,
        }
    }

    pub fn api(&self) -> String {
        self.app.url("")
    }
}

/// `POST /images` as `client`, returning the status and the JSON answer.
async fn upload_as(
    client: &Client,
    api: &str,
    bytes: Vec<u8>,
    fields: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut form = multipart::Form::new();
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form = form.part("file", multipart::Part::bytes(bytes).file_name("disk.img"));
    let r = client
        .post(format!("{api}/images"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// A chunk with extra fields.
async fn chunk_as(
    client: &Client,
    api: &str,
    identifier: &str,
    n: u32,
    bytes: Vec<u8>,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = multipart::Form::new().text("identifier", identifier.to_string());
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form = form.part(
        "part",
        multipart::Part::bytes(bytes).file_name(format!("{n}.part")),
    );
    client
        .post(format!("{api}/images/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn merge_as(
    client: &Client,
    api: &str,
    identifier: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = multipart::Form::new()
        .text("identifier", identifier.to_string())
        .text("filename", "joined.img");
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    client
        .post(format!("{api}/images/merge"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn get_as(client: &Client, url: String) -> (u16, serde_json::Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// The ids in a listing.
fn ids(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|i| i["imageId"].as_str().unwrap().to_string())
        .collect()
}

/// Every route with another user's image id answers as for a missing image, and changes
/// nothing.
async fn another_users_image_is_not_found(b: Backend) {
    let u = Users::spawn(b, Options::default()).await;
    let api = u.api();
    let (s, img) = upload_as(&u.alice, &api, pattern(1, 300_000), &[]).await;
    assert_eq!(s, 200, "{img}");
    assert_eq!(img["userId"], "alice", "the token's user owns the image");
    let id = img["imageId"].as_str().unwrap().to_string();
    let missing = uuid::Uuid::new_v4().to_string();
    for (who, client) in [("bob", &u.bob), ("alice", &u.alice)] {
        for target in [&missing, &id] {
            if who == "alice" && target == &id {
                continue;
            }
            let url = |tail: &str| format!("{api}/images/{target}{tail}");
            let (s, v) = get_as(client, url("")).await;
            assert_eq!(
                (s, v["code"].as_str()),
                (404, Some("IMAGE_NOT_FOUND")),
                "{who}: {v}"
            );
            let r = client.get(url("/action/download")).send().await.unwrap();
            assert_eq!(r.status(), 404, "{who} download");
            let r = client
                .get(url("/action/download?isZip=true"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{who} zip download");
            let r = client.head(url("/action/download")).send().await.unwrap();
            assert_eq!(r.status(), 404, "{who} HEAD");
            let r = client.post(url("/action/slim")).send().await.unwrap();
            assert_eq!(r.status(), 404, "{who} slim");
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["message"], "file path doesn't exist");
            let r = client.post(url("/action/check")).send().await.unwrap();
            assert_eq!(r.status(), 404, "{who} check");
            // Deleting a missing image succeeds (the original's answer): the same for
            // another user's, which stays.
            let r = client.delete(url("")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{who} delete");
            assert_eq!(r.text().await.unwrap(), "delete success");
        }
    }
    // Bob's listing holds nothing of alice's; asking for hers is refused.
    let (s, list) = get_as(&u.bob, format!("{api}/images")).await;
    assert_eq!(s, 200);
    assert!(ids(&list).is_empty(), "{list}");
    let (s, v) = get_as(&u.bob, format!("{api}/images?userId=alice")).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("FORBIDDEN")), "{v}");
    // Alice's image is untouched: same record, same bytes, nothing queued by bob.
    let (s, v) = get_as(&u.alice, format!("{api}/images/{id}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["slimStatus"], 0, "bob's slim did not start one: {v}");
    let bytes = u
        .alice
        .get(format!("{api}/images/{id}/action/download"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.to_vec(), pattern(1, 300_000));
    let (_, list) = get_as(&u.alice, format!("{api}/images")).await;
    assert_eq!(ids(&list), vec![id.clone()]);
    u.app.stop().await;
}

/// Two users sending chunks under the same identifier never mix them; neither sees,
/// cancels or merges the other's.
async fn identifiers_are_per_user(b: Backend) {
    let u = Users::spawn(b, Options::default()).await;
    let api = u.api();
    let ident = "shared-ident";
    let (a1, a2) = (pattern(10, 100_000), pattern(11, 50_000));
    let b1 = pattern(20, 70_000);
    for (n, bytes) in [(1, a1.clone()), (2, a2.clone())] {
        let r = chunk_as(&u.alice, &api, ident, n, bytes, &[]).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    // Bob's resume query does not see alice's chunks.
    let (s, v) = get_as(&u.bob, format!("{api}/images/upload?identifier={ident}")).await;
    assert_eq!(s, 200);
    assert_eq!(v["state"], "none", "{v}");
    assert_eq!(v["totalBytes"], 0, "{v}");
    let r = u
        .bob
        .get(format!(
            "{api}/images/upload?identifier={ident}&chunkNumber=1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "bob does not hold chunk 1");
    // Bob's merge finds nothing of his; his cancel leaves alice's chunks.
    let r = merge_as(&u.bob, &api, ident, &[]).await;
    assert_eq!(r.status(), 400, "bob has no chunks under this identifier");
    let r = u
        .bob
        .delete(format!("{api}/images/upload?identifier={ident}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Bob uploads his own chunk under the same identifier and merges it.
    let r = chunk_as(&u.bob, &api, ident, 1, b1.clone(), &[]).await;
    assert_eq!(r.status(), 200);
    let r = merge_as(&u.bob, &api, ident, &[]).await;
    assert_eq!(r.status(), 200);
    let bob_img: serde_json::Value = r.json().await.unwrap();
    assert_eq!(bob_img["userId"], "bob");
    // Alice still holds both chunks and merges her own bytes.
    let (_, v) = get_as(&u.alice, format!("{api}/images/upload?identifier={ident}")).await;
    assert_eq!(v["totalBytes"], 150_000, "{v}");
    let r = merge_as(&u.alice, &api, ident, &[]).await;
    assert_eq!(r.status(), 200);
    let alice_img: serde_json::Value = r.json().await.unwrap();
    assert_eq!(alice_img["userId"], "alice");
    assert_ne!(alice_img["imageId"], bob_img["imageId"]);
    let download = |c: &Client, id: &serde_json::Value| {
        let url = format!("{api}/images/{}/action/download", id.as_str().unwrap());
        let c = c.clone();
        async move { c.get(url).send().await.unwrap().bytes().await.unwrap() }
    };
    assert_eq!(
        download(&u.alice, &alice_img["imageId"]).await.to_vec(),
        [a1, a2].concat()
    );
    assert_eq!(download(&u.bob, &bob_img["imageId"]).await.to_vec(), b1);
    // A repeated merge by bob gives bob's image, not alice's (merged under the same
    // identifier).
    let r = merge_as(&u.bob, &api, ident, &[]).await;
    let again: serde_json::Value = r.json().await.unwrap();
    assert_eq!(again["imageId"], bob_img["imageId"]);
    // The longest identifier a client may send (128 characters) is stored with its user's
    // suffix too: chunk, resume query and merge work (PostgreSQL's columns were 128 long).
    let longest = "i".repeat(128);
    let r = chunk_as(&u.alice, &api, &longest, 1, pattern(30, 1000), &[]).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (s, v) = get_as(
        &u.alice,
        format!("{api}/images/upload?identifier={longest}"),
    )
    .await;
    assert_eq!((s, v["totalBytes"].clone()), (200, 1000.into()), "{v}");
    let r = merge_as(&u.alice, &api, &longest, &[]).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    u.app.stop().await;
}

/// A `userId` that names another user is refused for a user, and nothing is stored.
async fn naming_another_user_is_forbidden(b: Backend) {
    let u = Users::spawn(b, Options::default()).await;
    let api = u.api();
    // The field after the file part: the bytes were already received.
    let mut form = multipart::Form::new().part(
        "file",
        multipart::Part::bytes(pattern(3, 200_000)).file_name("disk.img"),
    );
    form = form.text("userId", "bob");
    let r = u
        .alice
        .post(format!("{api}/images"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let v = assert_error(r, 403, None).await;
    assert_eq!(v["code"], "FORBIDDEN");
    // Naming herself is fine.
    let (s, v) = upload_as(&u.alice, &api, pattern(4, 1000), &[("userId", "alice")]).await;
    assert_eq!(s, 200, "{v}");
    let r = chunk_as(
        &u.alice,
        &api,
        "x1",
        1,
        pattern(5, 1000),
        &[("userId", "bob")],
    )
    .await;
    assert_error(r, 403, None).await;
    let r = chunk_as(&u.alice, &api, "x1", 1, pattern(5, 1000), &[]).await;
    assert_eq!(r.status(), 200);
    let r = merge_as(&u.alice, &api, "x1", &[("userId", "bob")]).await;
    assert_error(r, 403, None).await;
    let r = u
        .alice
        .delete(format!("{api}/images/upload?identifier=x1&userId=bob"))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, None).await;
    let (s, _) = get_as(
        &u.alice,
        format!("{api}/images/upload?identifier=x1&userId=bob"),
    )
    .await;
    assert_eq!(s, 403);
    // Only alice's image exists; her chunk is still held.
    let (_, list) = get_as(&u.root, format!("{api}/images")).await;
    assert_eq!(ids(&list).len(), 1, "{list}");
    let (_, v) = get_as(&u.alice, format!("{api}/images/upload?identifier=x1")).await;
    assert_eq!(v["totalBytes"], 1000, "{v}");
    u.app.wait_jobs_idle().await;
    let left = u.app.leftovers().await;
    assert!(left.iter().all(|l| !l.contains("scratch")), "{left:?}");
    u.app.stop().await;
}

/// An admin sees every user's images, filters by user, reads and deletes any, and uploads
/// (single and chunked) on behalf of a user.
async fn admins_see_and_manage_everything(b: Backend) {
    let u = Users::spawn(b, Options::default()).await;
    let api = u.api();
    let (_, a) = upload_as(&u.alice, &api, pattern(6, 5000), &[]).await;
    let (_, bb) = upload_as(&u.bob, &api, pattern(7, 6000), &[]).await;
    let (a, bb) = (a["imageId"].clone(), bb["imageId"].clone());
    let (_, all) = get_as(&u.root, format!("{api}/images")).await;
    assert_eq!(ids(&all).len(), 2, "{all}");
    let (_, only) = get_as(&u.root, format!("{api}/images?userId=bob")).await;
    assert_eq!(ids(&only), vec![bb.as_str().unwrap().to_string()]);
    let (s, _) = get_as(&u.root, format!("{api}/images/{}", a.as_str().unwrap())).await;
    assert_eq!(s, 200);
    // On behalf of alice: the image is hers, and she sees it.
    let (s, v) = upload_as(&u.root, &api, pattern(8, 7000), &[("userId", "alice")]).await;
    assert_eq!((s, v["userId"].as_str()), (200, Some("alice")), "{v}");
    let (_, mine) = get_as(&u.alice, format!("{api}/images")).await;
    assert_eq!(ids(&mine).len(), 2, "{mine}");
    // Chunks sent by the admin for alice are alice's upload: she resumes and merges it.
    let r = chunk_as(
        &u.root,
        &api,
        "for-alice",
        1,
        pattern(9, 4000),
        &[("userId", "alice")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let (_, v) = get_as(
        &u.alice,
        format!("{api}/images/upload?identifier=for-alice"),
    )
    .await;
    assert_eq!(v["totalBytes"], 4000, "{v}");
    let r = chunk_as(&u.alice, &api, "for-alice", 2, pattern(10, 100), &[]).await;
    assert_eq!(r.status(), 200);
    let r = merge_as(&u.alice, &api, "for-alice", &[]).await;
    assert_eq!(r.status(), 200);
    // The admin deletes bob's image.
    let r = u
        .root
        .delete(format!("{api}/images/{}", bb.as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _) = get_as(&u.bob, format!("{api}/images/{}", bb.as_str().unwrap())).await;
    assert_eq!(s, 404, "the admin deleted it");
    u.app.stop().await;
}

/// Quotas with authentication on: a user reads its own usage and quota only and sets none;
/// an admin sets and reads anyone's; the limit it sets holds for that user's uploads.
async fn quota_routes_follow_roles(b: Backend) {
    let u = Users::spawn(b, Options::default()).await;
    let api = u.api();
    let (s, _) = upload_as(&u.alice, &api, pattern(1, 3000), &[]).await;
    assert_eq!(s, 200);
    let (s, v) = get_as(&u.alice, format!("{api}/usage")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["userId"].as_str(), v["bytes"].as_u64()),
        (Some("alice"), Some(3000))
    );
    assert_eq!(v["images"], 1, "{v}");
    for url in [
        format!("{api}/usage?userId=alice"),
        format!("{api}/quotas/alice"),
    ] {
        let (s, v) = get_as(&u.bob, url).await;
        assert_eq!((s, v["code"].as_str()), (403, Some("FORBIDDEN")), "{v}");
    }
    let limit = serde_json::json!({ "maxBytes": 5000, "maxImages": 10 });
    // A user may not set quotas, whatever its body: well-formed, malformed or too long
    // (403 before the body is judged).
    let long = format!("{{\"maxBytes\": {}}}", " ".repeat(10_000));
    for body in [limit.to_string(), "garbage".into(), long] {
        let r = u
            .bob
            .put(format!("{api}/quotas/bob"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let v = assert_error(r, 403, None).await;
        assert_eq!(v["code"], "FORBIDDEN", "{body:.40}: {v}");
    }
    let r = u
        .root
        .put(format!("{api}/quotas/alice"))
        .json(&limit)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, v) = get_as(&u.root, format!("{api}/usage?userId=alice")).await;
    assert_eq!((s, v["maxBytes"].as_u64()), (200, Some(5000)), "{v}");
    let (s, v) = get_as(&u.alice, format!("{api}/quotas/alice")).await;
    assert_eq!((s, v["maxBytes"].as_u64()), (200, Some(5000)), "{v}");
    // 3000 held + 3000 more is over 5000: refused, and nothing of it is kept.
    let (s, v) = upload_as(&u.alice, &api, pattern(2, 3000), &[]).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (413, Some("QUOTA_EXCEEDED")),
        "{v}"
    );
    // Bob has no limit of his own.
    let (s, _) = upload_as(&u.bob, &api, pattern(3, 6000), &[]).await;
    assert_eq!(s, 200);
    let (_, v) = get_as(&u.alice, format!("{api}/usage")).await;
    assert_eq!(v["bytes"], 3000, "{v}");
    u.app.stop().await;
}

/// Quotas under parallel uploads and late `userId` fields: small uploads in parallel do not
/// hold each other's room; an admin's upload for a user that names the user after the file is
/// charged to that user at its real size (not to the admin).
async fn quotas_count_real_bytes(b: Backend) {
    let u = Users::spawn(b, Options::default()).await;
    let api = u.api();
    let set = |user: &'static str, bytes: u64| {
        let (root, api) = (u.root.clone(), api.clone());
        async move {
            let r = root
                .put(format!("{api}/quotas/{user}"))
                .json(&serde_json::json!({ "maxBytes": bytes }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    set("alice", 20 << 20).await;
    let uploads = (0..5).map(|i| {
        let (alice, api) = (u.alice.clone(), api.clone());
        async move { upload_as(&alice, &api, pattern(i, 1 << 20), &[]).await }
    });
    for (s, v) in futures::future::join_all(uploads).await {
        assert_eq!(s, 200, "5 MiB in all fit a 20 MiB quota: {v}");
    }
    // The admin holds more than its own small quota allows; the upload is mia's.
    set("root", 1000).await;
    set("mia", 3 << 20).await;
    let form = multipart::Form::new()
        .part(
            "file",
            multipart::Part::bytes(pattern(9, 2 << 20)).file_name("late.img"),
        )
        .text("userId", "mia");
    let r = u
        .root
        .post(format!("{api}/images"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, v) = get_as(&u.root, format!("{api}/usage?userId=mia")).await;
    assert_eq!(v["bytes"], 2 << 20, "{v}");
    let (_, v) = get_as(&u.root, format!("{api}/usage")).await;
    assert_eq!(v["bytes"], 0, "nothing is left on the admin: {v}");
    u.app.stop().await;
}

/// Two `Authorization` headers are refused, whichever comes first.
async fn one_credential_per_request(b: Backend) {
    let u = Users::spawn(b, Options::default()).await;
    for pair in [[USERS[0].0, USERS[1].0], [USERS[1].0, "unknown"]] {
        let r = Client::new()
            .get(u.app.url("/images"))
            .header(header::AUTHORIZATION, format!("Bearer {}", pair[0]))
            .header(header::AUTHORIZATION, format!("Bearer {}", pair[1]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    }
    u.app.stop().await;
}

crate::backend_tests!(
    quotas_count_real_bytes,
    one_credential_per_request,
    quota_routes_follow_roles,
    another_users_image_is_not_found,
    identifiers_are_per_user,
    naming_another_user_is_forbidden,
    admins_see_and_manage_everything,
);

/// The real binary with `RUST_LOG=warn,audit=info` and JSON logs: every state change is one
/// event at target `audit`, with the user, role, what it concerned, the outcome, the remote
/// address and the request id; a chunked upload is one `upload.session_opened`, not one event
/// per chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_reach_the_audit_log() {
    let keys = tempfile::tempdir().unwrap();
    let tokens = keys.path().join("tokens");
    let lines: String = USERS.iter().map(|(t, u, r)| token_line(t, u, r)).collect();
    std::fs::write(&tokens, lines).unwrap();
    let app = TestApp::spawn(
        Backend::SqliteLocal,
        Options {
            env: vec![
                ("FS_AUTH", "token".into()),
                ("FS_AUTH_TOKENS_FILE", tokens.display().to_string()),
            ],
            no_server: true,
            ..Default::default()
        },
    )
    .await;
    let log = app.dir.path().join("server.log");
    let replica = crate::helpers::Replica::start(
        &app.vars,
        crate::helpers::free_port(),
        &log,
        &[("RUST_LOG", "warn,audit=info"), ("FS_LOG_FORMAT", "json")],
    )
    .await;
    let api = replica.api("");
    let (id, request_id) = audited_requests(&api).await;
    let events = audit_events(&log).await;
    assert_audit_trail(&events, &id, &request_id);
    drop(replica);
}

/// Alice uploads, uploads in chunks, merges, cancels, checks, slims and deletes; root acts
/// for alice and sets bob's quota; bob is refused naming alice and deletes alice's image in
/// vain. Gives alice's image id and the request id of her delete.
async fn audited_requests(api: &str) -> (String, String) {
    let (alice, bob, root) = (
        client_with(USERS[0].0),
        client_with(USERS[1].0),
        client_with(USERS[2].0),
    );
    let (s, img) = upload_as(&alice, api, pattern(1, 5000), &[]).await;
    assert_eq!(s, 200);
    let id = img["imageId"].as_str().unwrap().to_string();
    let (s, _) = upload_as(&root, api, pattern(2, 5000), &[("userId", "alice")]).await;
    assert_eq!(s, 200);
    for n in 1..=2 {
        let r = chunk_as(&alice, api, "audited", n, pattern(n as u64, 1000), &[]).await;
        assert_eq!(r.status(), 200);
    }
    let r = merge_as(&alice, api, "audited", &[]).await;
    assert_eq!(r.status(), 200);
    let r = chunk_as(&alice, api, "dropped", 1, pattern(3, 1000), &[]).await;
    assert_eq!(r.status(), 200);
    let r = alice
        .delete(format!("{api}/images/upload?identifier=dropped"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = alice
        .post(format!("{api}/images/{id}/action/check"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = alice
        .post(format!("{api}/images/{id}/action/slim"))
        .send()
        .await
        .unwrap();
    assert!(r.status().as_u16() < 500);
    let (s, _) = upload_as(&bob, api, pattern(4, 100), &[("userId", "alice")]).await;
    assert_eq!(s, 403);
    let r = chunk_as(
        &bob,
        api,
        "bobs",
        1,
        pattern(5, 100),
        &[("userId", "alice")],
    )
    .await;
    assert_eq!(r.status(), 403);
    let r = bob
        .delete(format!("{api}/images/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the answer a missing image gets");
    let r = root
        .put(format!("{api}/quotas/bob"))
        .json(&serde_json::json!({ "maxBytes": 1_000_000, "maxImages": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = alice
        .delete(format!("{api}/images/{id}"))
        .send()
        .await
        .unwrap();
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(r.status(), 200);
    (id, request_id)
}

/// The audit events in the JSON log at `log`, once every kind the requests cause is there
/// (at most 10 s).
async fn audit_events(log: &std::path::Path) -> Vec<serde_json::Value> {
    use serde_json::Value;
    let wanted = [
        "image.upload",
        "upload.session_opened",
        "upload.merge",
        "upload.cancel",
        "image.check",
        "image.slim",
        "quota.set",
        "image.delete",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "audit" || v["action"].is_string())
            .collect();
        let done = wanted
            .iter()
            .all(|a| events.iter().any(|e| e["action"] == *a));
        if done {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "missing audit events: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every event names the remote address and request id; each action has its user, role,
/// owner, outcome and detail as `audited_requests` caused them.
fn assert_audit_trail(events: &[serde_json::Value], id: &str, request_id: &str) {
    use serde_json::Value;
    let of =
        |action: &str| -> Vec<&Value> { events.iter().filter(|e| e["action"] == action).collect() };
    for e in events {
        assert!(
            e["remote"].as_str().is_some_and(|r| r.starts_with("127.")),
            "{e}"
        );
        assert!(
            e["request_id"].as_str().is_some_and(|r| !r.is_empty()),
            "{e}"
        );
    }
    // Two chunks, one session: one event (plus the cancelled upload's).
    assert_eq!(of("upload.session_opened").len(), 2, "{events:?}");
    let uploads = of("image.upload");
    assert!(uploads.iter().any(|e| e["user"] == "alice"
        && e["role"] == "user"
        && e["outcome"] == "success"
        && e["image_id"] == id));
    // The admin acting for alice: the owner is named.
    assert!(uploads.iter().any(|e| e["user"] == "root"
        && e["role"] == "admin"
        && e["owner"] == "alice"
        && e["outcome"] == "success"));
    // Bob naming alice: refused, with its status.
    assert!(uploads.iter().any(|e| e["user"] == "bob"
        && e["outcome"] == "refused"
        && e["status"] == 403
        && e["error_code"] == "FORBIDDEN"));
    let merge = of("upload.merge")[0];
    assert_eq!(merge["identifier"], "audited", "{merge}");
    assert_eq!(merge["outcome"], "success", "{merge}");
    // A merge's event says what it stored, as an upload's does.
    let stored = merge["detail"].as_str().unwrap_or_default();
    assert!(stored.starts_with("size_bytes="), "{merge}");
    let upload = uploads.iter().find(|e| e["outcome"] == "success").unwrap();
    assert!(
        upload["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("size_bytes="),
        "{upload}"
    );
    let quota = of("quota.set")[0];
    assert_eq!(quota["owner"], "bob", "{quota}");
    assert_eq!(quota["user"], "root", "{quota}");
    // Bob's delete of alice's image deleted nothing, and the trail says so.
    let deletes = of("image.delete");
    assert!(deletes
        .iter()
        .any(|e| e["user"] == "bob" && e["outcome"] == "not_found" && e["image_id"] == id));
    let delete = deletes.iter().find(|e| e["user"] == "alice").unwrap();
    assert_eq!(delete["outcome"], "success", "{delete}");
    assert_eq!(delete["image_id"], id, "{delete}");
    assert_eq!(delete["request_id"], request_id, "{delete}");
    // A refused chunk names its identifier.
    let chunk = of("upload.chunk")[0];
    assert_eq!(
        (chunk["identifier"].as_str(), chunk["status"].as_u64()),
        (Some("bobs"), Some(403)),
        "{chunk}"
    );
}
