//! Login, tokens, refresh rotation, logout, rate limits, token validation.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use server::demo::{DEMO_PASSWORD, demo_accounts};
use tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_account_logs_in_with_an_eddsa_jwt() {
    let server = TestServer::start(true).await;
    let c = client();
    let keys = server_keys(&server.data_dir());
    assert_eq!(keys.len(), 1, "one key generated on first start");
    let (kid, key) = &keys[0];
    assert_eq!(kid, server.state.auth.tokens.keys().active_kid());

    for account in demo_accounts().unwrap() {
        let device = format!("tablet-{}", account.username);
        let r = login(&c, &server.base, &account.username, DEMO_PASSWORD, &device).await;
        assert_eq!(r.status(), 200, "{}", account.username);
        let tokens: Tokens = r.json().await.unwrap();
        assert_eq!(tokens.expires_in, 900);
        assert_eq!(tokens.refresh_token.len(), 43);

        let (header, claims) = decode_unverified(&tokens.access_token);
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], kid.as_str());
        assert_eq!(claims["iss"], "kiemtra");
        assert_eq!(claims["aud"], "kiemtra-api");
        assert_eq!(claims["role"], account.role.as_str());
        assert_eq!(claims["did"], device.as_str());
        assert_eq!(claims["name"], account.username.as_str());
        let exp = claims["exp"].as_i64().unwrap();
        let nbf = claims["nbf"].as_i64().unwrap();
        assert_eq!(exp - nbf, 900, "lifetime is 15 minutes");
        assert!(nbf <= now_unix() + 5);
        assert_eq!(
            claims["unit"].as_str(),
            account.unit_code.as_deref(),
            "unit scope of {}",
            account.username
        );

        // `sub` is the user's id in the database.
        let username = account.username.clone();
        let user = server
            .state
            .db
            .read(move |c| server::users::find(c, &username))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claims["sub"], user.id.as_str());
        assert_eq!(claims["team"].as_str(), user.team_id.as_deref());

        // The signature verifies with the server's public key, EdDSA only.
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["kiemtra-api"]);
        v.set_issuer(&["kiemtra"]);
        let decoding = DecodingKey::from_ed_der(key.verifying_key().as_bytes());
        let verified = jsonwebtoken::decode::<Value>(&tokens.access_token, &decoding, &v).unwrap();
        assert_eq!(verified.claims["sub"], user.id.as_str());

        // And the token works.
        let me: Value = get_with(&c, &server.url("/api/v1/me"), &tokens.access_token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["username"], account.username.as_str());
        assert_eq!(me["device_id"], device.as_str());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_get_one_generic_401() {
    let server = TestServer::start(true).await;
    let c = client();
    let wrong = login(&c, &server.base, "admin", "not-the-password", "d1").await;
    assert_eq!(wrong.status(), 401);
    let wrong: Value = wrong.json().await.unwrap();
    let unknown = login(&c, &server.base, "nobody-here", "demo", "d1").await;
    assert_eq!(unknown.status(), 401);
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(wrong["error"]["code"], "invalid_credentials");
    // Nothing tells an unknown user from a wrong password.
    assert_eq!(wrong, unknown);
    // Malformed requests are 400 with a JSON error, not 401.
    let r = c
        .post(server.url("/api/v1/auth/login"))
        .json(&json!({ "username": "admin" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "bad_request");
    let r = login(&c, &server.base, "admin", "demo", "bad device id!").await;
    assert_eq!(r.status(), 400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_bad_logins_are_rate_limited_per_account() {
    let server = TestServer::start_with(true, |s| {
        s.auth.login_burst_per_account = 4;
        s.auth.login_refill_secs_per_account = 600;
    })
    .await;
    let c = client();
    for attempt in 1..=4 {
        let r = login(&c, &server.base, "inspector1", "guess", "d").await;
        assert_eq!(r.status(), 401, "attempt {attempt}");
    }
    let r = login(&c, &server.base, "inspector1", "guess", "d").await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&retry), "Retry-After {retry}");
    assert_eq!(error_code(r).await, "rate_limited");
    // Even the right password waits now...
    let r = login(&c, &server.base, "inspector1", DEMO_PASSWORD, "d").await;
    assert_eq!(r.status(), 429);
    // ...but other accounts are not locked out by it.
    login_ok(&c, &server.base, "inspector2", DEMO_PASSWORD).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_rate_limited_per_address() {
    let server = TestServer::start_with(true, |s| {
        s.auth.login_burst_per_ip = 3;
        s.auth.login_refill_secs_per_ip = 600;
    })
    .await;
    let c = client();
    for name in ["a-user", "b-user", "c-user"] {
        let r = login(&c, &server.base, name, "guess", "d").await;
        assert_eq!(r.status(), 401, "{name}");
    }
    let r = login(&c, &server.base, "admin", DEMO_PASSWORD, "d").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let server = TestServer::start(true).await;
    let c = client();
    let first = login_ok(&c, &server.base, "inspector1", DEMO_PASSWORD).await;

    let r = refresh(&c, &server.base, &first.refresh_token).await;
    assert_eq!(r.status(), 200);
    let second: Tokens = r.json().await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.expires_in, 900);
    let (_, claims) = decode_unverified(&second.access_token);
    assert_eq!(claims["did"], "test-device", "the device stays bound");
    let r = get_with(&c, &server.url("/api/v1/units"), &second.access_token).await;
    assert_eq!(r.status(), 200);

    // The used token is refused; presenting it revoked the whole family...
    let r = refresh(&c, &server.base, &first.refresh_token).await;
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "invalid_refresh_token");
    // ...so the newer token no longer works either.
    let r = refresh(&c, &server.base, &second.refresh_token).await;
    assert_eq!(r.status(), 401);

    // A fresh login starts a new family.
    let third = login_ok(&c, &server.base, "inspector1", DEMO_PASSWORD).await;
    assert_eq!(
        refresh(&c, &server.base, &third.refresh_token)
            .await
            .status(),
        200
    );
    // Garbage is refused without a database lookup.
    assert_eq!(refresh(&c, &server.base, "x").await.status(), 401);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_only_that_session() {
    let server = TestServer::start(true).await;
    let c = client();
    let tablet = login_ok(&c, &server.base, "secretariat", DEMO_PASSWORD).await;
    let browser = login_ok(&c, &server.base, "secretariat", DEMO_PASSWORD).await;
    let r = c
        .post(server.url("/api/v1/auth/logout"))
        .json(&json!({ "refresh_token": tablet.refresh_token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        refresh(&c, &server.base, &tablet.refresh_token)
            .await
            .status(),
        401
    );
    assert_eq!(
        refresh(&c, &server.base, &browser.refresh_token)
            .await
            .status(),
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_access_tokens_are_refused() {
    let server = TestServer::start(true).await;
    let c = client();
    let url = server.url("/api/v1/units");
    let (kid, key) = server_keys(&server.data_dir()).remove(0);
    let admin_id = server
        .state
        .db
        .read(|c| server::users::find(c, "admin"))
        .await
        .unwrap()
        .unwrap()
        .id;
    let now = now_unix();

    // Control: a token forged with the server's own key and correct claims
    // is accepted, so each refusal below is due to the one thing changed.
    let control = forge_eddsa(&kid, &key, &valid_claims(&admin_id, now));
    assert_eq!(get_with(&c, &url, &control).await.status(), 200);

    let mut expired = valid_claims(&admin_id, now);
    expired["exp"] = json!(now - 3600);
    expired["nbf"] = json!(now - 4600);
    let expired = forge_eddsa(&kid, &key, &expired);

    let other_key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let other_signer = forge_eddsa(&kid, &other_key, &valid_claims(&admin_id, now));

    let mut wrong_aud = valid_claims(&admin_id, now);
    wrong_aud["aud"] = json!("some-other-service");
    let wrong_aud = forge_eddsa(&kid, &key, &wrong_aud);

    let mut no_exp = valid_claims(&admin_id, now);
    no_exp.as_object_mut().unwrap().remove("exp");
    let no_exp = forge_eddsa(&kid, &key, &no_exp);

    let mut not_yet = valid_claims(&admin_id, now);
    not_yet["nbf"] = json!(now + 3600);
    let not_yet = forge_eddsa(&kid, &key, &not_yet);

    let payload = control.split('.').nth(1).unwrap().to_owned();
    let none_header = base64url(&json!({ "alg": "none", "typ": "JWT", "kid": kid }));
    let alg_none = format!("{none_header}.{payload}.");

    // Algorithm confusion: HS256 keyed with the public key bytes.
    let mut hs_header = jsonwebtoken::Header::new(Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &valid_claims(&admin_id, now),
        &jsonwebtoken::EncodingKey::from_secret(key.verifying_key().as_bytes()),
    )
    .unwrap();

    let unknown_kid = forge_eddsa("not-our-kid", &key, &valid_claims(&admin_id, now));

    for (name, token) in [
        ("expired", expired),
        ("signed by another key", other_signer),
        ("wrong audience", wrong_aud),
        ("no exp", no_exp),
        ("not yet valid", not_yet),
        ("alg none", alg_none),
        ("HS256", hs256),
        ("unknown kid", unknown_kid),
        ("garbage", "a.b.c".to_owned()),
    ] {
        let r = get_with(&c, &url, &token).await;
        assert_eq!(r.status(), 401, "{name}");
        assert!(r.headers().contains_key("www-authenticate"), "{name}");
        assert_eq!(error_code(r).await, "unauthorized", "{name}");
    }
    // No token at all.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "unauthorized");
    // Browsers' WebSocket style: ?token=
    let r = c
        .get(format!("{url}?token={control}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

fn base64url(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}
