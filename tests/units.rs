//! `GET /api/v1/units`: Hanoi's units (both structures) and departments.

use serde_json::Value;
use server::demo::DEMO_PASSWORD;
use tests::*;

async fn units(server: &TestServer, token: &str, query: &str) -> (u16, Value) {
    let r = get_with(
        &client(),
        &server.url(&format!("/api/v1/units{query}")),
        token,
    )
    .await;
    (r.status().as_u16(), r.json().await.unwrap())
}

fn of_type<'a>(list: &'a Value, types: &[&str]) -> Vec<&'a Value> {
    list.as_array()
        .unwrap()
        .iter()
        .filter(|u| types.contains(&u["type"].as_str().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_units_are_hanoi_126_wards_and_communes_plus_departments() {
    let server = TestServer::start(true).await;
    let token = login_ok(&client(), &server.base, "leader", DEMO_PASSWORD)
        .await
        .access_token;

    let (status, list) = units(&server, &token, "").await;
    assert_eq!(status, 200);
    let local = of_type(&list, &["ward", "commune"]);
    assert_eq!(local.len(), 126);
    assert_eq!(of_type(&list, &["ward"]).len(), 51);
    assert_eq!(of_type(&list, &["commune"]).len(), 75);
    assert!(
        local
            .iter()
            .all(|u| u["structure"] == "post_2025" && u["parent_code"] == "01")
    );
    let ba_dinh = local.iter().find(|u| u["code"] == "00004").unwrap();
    assert_eq!(ba_dinh["name"], "Ba Đình");
    assert_eq!(ba_dinh["full_name"], "Phường Ba Đình");
    assert_eq!(ba_dinh["type"], "ward");
    assert_eq!(ba_dinh["name_en"], "Ba Dinh Ward");
    let hoa = local
        .iter()
        .filter(|u| u["name"].as_str().unwrap().contains("Hòa"))
        .count();
    assert!(hoa > 0, "GSO spelling with full diacritics is kept");

    let departments = of_type(&list, &["so"]);
    assert_eq!(departments.len(), 18);
    let police = departments.iter().find(|u| u["code"] == "CA-TP").unwrap();
    assert_eq!(police["name"], "Công an thành phố Hà Nội");
    assert_eq!(police["kind"], "nganh_doc");

    // The explicit default is the same list.
    let (_, explicit) = units(&server, &token, "?structure=post_2025").await;
    assert_eq!(explicit, list);

    // Filters.
    let (_, wards) = units(&server, &token, "?type=ward").await;
    assert_eq!(wards.as_array().unwrap().len(), 51);
    let (_, so) = units(&server, &token, "?type=so").await;
    assert_eq!(so.as_array().unwrap().len(), 18);

    // Before 01/07/2025 the same code named another unit.
    let (_, pre) = units(&server, &token, "?structure=pre_2025").await;
    assert_eq!(of_type(&pre, &["ward", "commune", "township"]).len(), 526);
    assert_eq!(
        of_type(&pre, &["urban_district", "rural_district", "town"]).len(),
        30
    );
    let truc_bach = pre
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["code"] == "00004")
        .unwrap();
    assert_eq!(truc_bach["full_name"], "Phường Trúc Bạch");
    assert!(of_type(&pre, &["so"]).is_empty());

    // Bad parameters are 400 with a JSON error.
    let (status, body) = units(&server, &token, "?structure=2030").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, _) = units(&server, &token, "?type=village").await;
    assert_eq!(status, 400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_has_no_units_and_no_accounts() {
    let server = TestServer::start(false).await;
    let c = client();
    let r = login(&c, &server.base, "admin", DEMO_PASSWORD, "d").await;
    assert_eq!(r.status(), 401, "demo accounts exist only in demo mode");
    let (kid, key) = server_keys(&server.data_dir()).remove(0);
    let token = forge_eddsa(&kid, &key, &valid_claims("someone", now_unix()));
    let (status, list) = units(&server, &token, "").await;
    assert_eq!(status, 200);
    assert_eq!(list, serde_json::json!([]));
    server.stop().await;
}
