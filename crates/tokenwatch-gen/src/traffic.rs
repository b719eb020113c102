//! What ordinary requests look like: clients (user agent, token lifetime), endpoints, statuses.
//!
//! The mix is modelled on a small shop API: mostly reads, some writes, the odd 404 and 5xx,
//! and a few 401/403 that carry valid tokens (wrong scope, a permission check) so that the
//! rules see rejections that are not about expiry. Nothing here ever puts a JWT in a URL.

use super::line::push_u64;
use super::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientKind {
    Browser,
    MobileApp,
    Cli,
    Sdk,
}

/// A kind of client with the token its issuer hands out.
#[derive(Debug)]
pub(crate) struct Client {
    pub ua: &'static str,
    pub kind: ClientKind,
    /// Interactive clients get 15-minute tokens; machine clients get one hour.
    pub lifetime_s: i64,
    pub azp: &'static str,
    pub scope: &'static str,
    pub weight: u32,
}

const WEB: &str = "openid profile orders:read orders:write cart:write";
const APP: &str = "openid profile offline_access orders:read orders:write cart:write";
const MACHINE: &str = "orders:read invoices:read products:read";

const fn client(ua: &'static str, kind: ClientKind, weight: u32) -> Client {
    let (lifetime_s, azp, scope) = match kind {
        ClientKind::Browser => (900, "web-frontend", WEB),
        ClientKind::MobileApp => (900, "shop-mobile", APP),
        ClientKind::Cli => (3600, "shop-cli", MACHINE),
        ClientKind::Sdk => (3600, "partner-sdk", MACHINE),
    };
    Client {
        ua,
        kind,
        lifetime_s,
        azp,
        scope,
        weight,
    }
}

pub(crate) const CLIENTS: &[Client] = &[
    client(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        ClientKind::Browser,
        18,
    ),
    client(
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
        ClientKind::Browser,
        9,
    ),
    client(
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        ClientKind::Browser,
        5,
    ),
    client(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
        ClientKind::Browser,
        6,
    ),
    client(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
        ClientKind::Browser,
        7,
    ),
    client(
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.39 Mobile Safari/537.36",
        ClientKind::Browser,
        6,
    ),
    client("ShopApp/5.12.0 (iPhone; iOS 18.1; Scale/3.00)", ClientKind::MobileApp, 12),
    client("ShopApp/5.11.2 (Android 14; SM-S921B)", ClientKind::MobileApp, 9),
    client("okhttp/4.12.0", ClientKind::MobileApp, 4),
    client("Dalvik/2.1.0 (Linux; U; Android 13; Pixel 7 Build/TQ3A.230901.001)", ClientKind::MobileApp, 3),
    client("curl/8.5.0", ClientKind::Cli, 3),
    client("HTTPie/3.2.4", ClientKind::Cli, 1),
    client("python-requests/2.32.3", ClientKind::Sdk, 5),
    client("Go-http-client/2.0", ClientKind::Sdk, 3),
    client("axios/1.7.7", ClientKind::Sdk, 3),
    client("shop-sdk-java/3.4.1 (Java 21.0.5; Linux amd64)", ClientKind::Sdk, 2),
];

pub(crate) fn client_weights() -> Vec<u32> {
    CLIENTS.iter().map(|c| c.weight).collect()
}

const SEARCH: &[&str] = &[
    "wireless+headphones",
    "usb-c+cable",
    "running+shoes",
    "coffee+grinder",
    "desk+lamp",
    "standing+desk",
    "phone+case",
    "yoga+mat",
    "gift+card",
];
const CATEGORY: &[&str] = &[
    "electronics",
    "books",
    "garden",
    "toys",
    "kitchen",
    "sports",
    "outdoor",
    "beauty",
];
const SORT: &[&str] = &["price", "-price", "rating", "newest", "relevance"];
const BASE36: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Writes an endpoint's path (with query) into the cleared path, drawing its ids from the
/// generator's one PRNG, and returns the method and the status it usually answers.
type Endpoint = fn(&mut Rng, i64, &mut String) -> (&'static str, u16);

/// The endpoints with their relative frequency. The order is part of the output: a seed's
/// draws index this table, so reordering it changes every generated run.
const ENDPOINTS: [(u32, Endpoint); 16] = [
    (14, list_orders),
    (10, get_order),
    (3, create_order),
    (2, update_order),
    (1, delete_order_item),
    (14, list_products),
    (12, get_product),
    (6, search),
    (8, get_me),
    (1, put_preferences),
    (7, get_cart),
    (4, add_to_cart),
    (2, get_invoice_pdf),
    (6, list_notifications),
    (5, recommendations),
    (3, store_inventory),
];

/// The weights of [`ENDPOINTS`], as the slice [`Rng::weighted`] draws from.
const ENDPOINT_WEIGHTS: [u32; ENDPOINTS.len()] = {
    let mut w = [0; ENDPOINTS.len()];
    let mut i = 0;
    while i < w.len() {
        w[i] = ENDPOINTS[i].0;
        i += 1;
    }
    w
};

fn order_id(rng: &mut Rng, out: &mut String) {
    out.push_str("ord_");
    let mut x = rng.next_u64();
    for _ in 0..10 {
        out.push(BASE36[(x % 36) as usize] as char);
        x /= 36;
    }
}

fn sku(rng: &mut Rng, out: &mut String) {
    out.push_str("SKU-");
    push_u64(out, 100_000 + rng.below(900_000));
}

/// A cacheable read: 304 Not Modified with probability `p`, else 200.
fn cached(rng: &mut Rng, p: f64) -> u16 {
    if rng.chance(p) {
        304
    } else {
        200
    }
}

fn list_orders(rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/orders?page=");
    push_u64(path, 1 + rng.below(12));
    path.push_str("&per_page=25");
    ("GET", cached(rng, 0.08))
}

fn get_order(rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/orders/");
    order_id(rng, path);
    ("GET", cached(rng, 0.1))
}

fn create_order(_rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/orders");
    ("POST", 201)
}

fn update_order(rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/orders/");
    order_id(rng, path);
    ("PATCH", 200)
}

fn delete_order_item(rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/orders/");
    order_id(rng, path);
    path.push_str("/items/");
    push_u64(path, 1 + rng.below(6));
    ("DELETE", 204)
}

fn list_products(rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/products?category=");
    path.push_str(rng.pick(CATEGORY));
    path.push_str("&sort=");
    path.push_str(rng.pick(SORT));
    path.push_str("&page=");
    push_u64(path, 1 + rng.below(8));
    ("GET", cached(rng, 0.15))
}

fn get_product(rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/products/");
    sku(rng, path);
    ("GET", cached(rng, 0.2))
}

fn search(rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v2/search?q=");
    path.push_str(rng.pick(SEARCH));
    path.push_str("&limit=20");
    ("GET", 200)
}

fn get_me(rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/users/me");
    ("GET", cached(rng, 0.3))
}

fn put_preferences(_rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/users/me/preferences");
    ("PUT", 204)
}

fn get_cart(_rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/cart");
    ("GET", 200)
}

fn add_to_cart(_rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/cart/items");
    ("POST", 201)
}

fn get_invoice_pdf(rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/invoices/INV-2026-");
    push_u64(path, 10_000 + rng.below(90_000));
    path.push_str("/pdf");
    ("GET", 200)
}

/// The one endpoint whose query depends on the time: unread notifications since a recent
/// moment, so the query stays plausible whatever the run's start.
fn list_notifications(rng: &mut Rng, now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/notifications?since=");
    push_u64(path, (now_s - rng.range(60, 3600)).max(0) as u64);
    path.push_str("&unread=true");
    ("GET", cached(rng, 0.25))
}

fn recommendations(_rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v2/recommendations?limit=10");
    ("GET", 200)
}

fn store_inventory(rng: &mut Rng, _now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.push_str("/api/v1/stores/");
    push_u64(path, 1 + rng.below(400));
    path.push_str("/inventory?sku=");
    sku(rng, path);
    ("GET", 200)
}

/// Writes an ordinary request's path (with query) into `path`; returns method and status.
pub(crate) fn pick_request(rng: &mut Rng, now_s: i64, path: &mut String) -> (&'static str, u16) {
    path.clear();
    let (_, endpoint) = ENDPOINTS[rng.weighted(&ENDPOINT_WEIGHTS)];
    let (method, usual) = endpoint(rng, now_s, path);
    (method, with_errors(rng, usual))
}

/// Errors on top of the endpoint's usual answer, about 8% of requests. The 401 and 403 here
/// carry valid tokens (a wrong scope, a permission check), so the rules see rejections that
/// are not about expiry.
fn with_errors(rng: &mut Rng, usual: u16) -> u16 {
    match rng.below(1000) {
        0..=39 => 404,
        40..=59 => 400,
        60..=66 => 500,
        67..=69 => 503,
        70..=74 => 401,
        75..=78 => 403,
        79..=81 => 429,
        _ => usual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_look_like_api_calls_and_never_carry_tokens() {
        let mut rng = Rng::new(5);
        let mut path = String::new();
        let mut statuses = std::collections::BTreeMap::new();
        for _ in 0..5000 {
            let (m, s) = pick_request(&mut rng, 1_795_910_400, &mut path);
            assert!(path.starts_with("/api/"), "{path}");
            assert!(!path.contains("eyJ") && !path.contains('"') && !path.contains('\\'));
            assert!(["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&m));
            *statuses.entry(s).or_insert(0u32) += 1;
        }
        let ok: u32 = [200, 201, 204, 304].iter().filter_map(|s| statuses.get(s)).sum();
        assert!(ok > 4500, "{statuses:?}");
        assert!(statuses.contains_key(&404) && statuses.contains_key(&401));
    }
}
