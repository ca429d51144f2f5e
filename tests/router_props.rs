//! Property tests: the radix-tree router against a naive reference matcher that tries every
//! route and ranks matches segment by segment (static beats parameter beats catch-all).

use kairos_rs::config::model::{MethodSet, RouteConfig};
use kairos_rs::config::router::{Lookup, Router};
use proptest::prelude::*;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Lit(String),
    Param,
    CatchAll,
}

fn template(segs: &[Seg]) -> String {
    let mut s = String::new();
    for (i, seg) in segs.iter().enumerate() {
        s.push('/');
        match seg {
            Seg::Lit(l) => s.push_str(l),
            Seg::Param => s.push_str(&format!("{{p{i}}}")),
            Seg::CatchAll => s.push_str(&format!("{{*rest{i}}}")),
        }
    }
    s
}

/// Rank of a match: per segment 2 (literal), 1 (parameter), 0 (catch-all); higher wins,
/// compared left to right.
fn reference_match(segs: &[Seg], path: &str) -> Option<Vec<u8>> {
    let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let mut rank = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        match seg {
            Seg::CatchAll => {
                let rest = parts.get(i..)?.join("/");
                if rest.is_empty() {
                    return None;
                }
                rank.push(0);
                return Some(rank);
            }
            Seg::Lit(l) => {
                if parts.get(i)? != l {
                    return None;
                }
                rank.push(2);
            }
            Seg::Param => {
                if parts.get(i)?.is_empty() {
                    return None;
                }
                rank.push(1);
            }
        }
    }
    (parts.len() == segs.len()).then_some(rank)
}

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "users", "v1"]).prop_map(|s| Seg::Lit(s.to_string())),
        2 => Just(Seg::Param),
    ]
}

fn route_shape() -> impl Strategy<Value = Vec<Seg>> {
    (prop::collection::vec(seg(), 1..4), any::<bool>()).prop_map(|(mut segs, catch_all)| {
        if catch_all {
            segs.push(Seg::CatchAll);
        }
        segs
    })
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "users", "v1", "42", "x-y"]),
        1..6,
    )
    .prop_map(|parts| format!("/{}", parts.join("/")))
}

fn route(i: usize, segs: &[Seg]) -> RouteConfig {
    RouteConfig {
        name: format!("r{i}"),
        path: template(segs),
        methods: MethodSet::ALL,
        host: None,
        upstream: 0,
        rewrite: None,
        timeout: Duration::from_secs(1),
        preserve_host: false,
        auth: Default::default(),
        permissions: Vec::new(),
        cors: None,
        rate_limit: None,
        transforms: Default::default(),
        cache: None,
        tenant: None,
        websocket: None,
        grpc: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn radix_router_agrees_with_the_reference(shapes in prop::collection::vec(route_shape(), 1..12), paths in prop::collection::vec(path(), 1..20)) {
        // Routes that can never be told apart are a config error; keep one of each shape.
        let mut unique: Vec<Vec<Seg>> = Vec::new();
        for s in shapes {
            let shape: Vec<u8> = s.iter().map(|x| match x { Seg::Lit(_) => 0, Seg::Param => 1, Seg::CatchAll => 2 }).collect();
            let same = unique.iter().any(|u| {
                let us: Vec<u8> = u.iter().map(|x| match x { Seg::Lit(_) => 0, Seg::Param => 1, Seg::CatchAll => 2 }).collect();
                us == shape && u.iter().zip(&s).all(|(a, b)| !matches!((a, b), (Seg::Lit(x), Seg::Lit(y)) if x != y))
            });
            if !same {
                unique.push(s);
            }
        }
        let routes: Vec<RouteConfig> = unique.iter().enumerate().map(|(i, s)| route(i, s)).collect();
        let router = Router::build(&routes).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        for p in &paths {
            let want = unique
                .iter()
                .enumerate()
                .filter_map(|(i, s)| reference_match(s, p).map(|rank| (rank, i)))
                .max_by(|a, b| a.0.cmp(&b.0))
                .map(|(_, i)| i);
            let got = match router.lookup(None, p, "GET") {
                Lookup::Found { route, params } => {
                    // Every parameter value is a non-empty piece of the path.
                    for (_, v) in params.iter() {
                        prop_assert!(!v.is_empty() && p.contains(v));
                    }
                    Some(route)
                }
                Lookup::MethodNotAllowed { .. } => panic!("all routes allow every method"),
                Lookup::NotFound => None,
            };
            prop_assert_eq!(got, want, "path {} routes {:?}", p, routes.iter().map(|r| &r.path).collect::<Vec<_>>());
        }
    }

    #[test]
    fn methods_split_one_path_between_routes(get_first in any::<bool>()) {
        let mut a = route(0, &[Seg::Lit("x".into()), Seg::Param]);
        a.methods = MethodSet(MethodSet::bit("GET").unwrap() | MethodSet::bit("HEAD").unwrap());
        let mut b = route(1, &[Seg::Lit("x".into()), Seg::Param]);
        b.methods = MethodSet(MethodSet::bit("POST").unwrap());
        let routes = if get_first { vec![a, b] } else { vec![b, a] };
        let router = Router::build(&routes).unwrap();
        let name = |m: &str| match router.lookup(None, "/x/1", m) {
            Lookup::Found { route, .. } => routes[route].name.clone(),
            Lookup::MethodNotAllowed { allow } => format!("405 {allow}"),
            Lookup::NotFound => "404".into(),
        };
        prop_assert_eq!(name("GET"), "r0");
        prop_assert_eq!(name("POST"), "r1");
        prop_assert_eq!(name("DELETE"), "405 GET, HEAD, POST");
    }
}

#[test]
fn parameter_and_catch_all_at_the_same_position_are_told_apart() {
    let shapes = [
        vec![Seg::Lit("v1".into()), Seg::Param],
        vec![Seg::Lit("v1".into()), Seg::CatchAll],
        vec![Seg::Lit("v1".into()), Seg::Lit("health".into())],
        vec![Seg::Param, Seg::Lit("b".into()), Seg::Lit("c".into())],
        vec![Seg::Lit("a".into()), Seg::CatchAll],
    ];
    let routes: Vec<RouteConfig> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| route(i, s))
        .collect();
    let router = Router::build(&routes).unwrap();
    let hit = |p: &str| match router.lookup(None, p, "GET") {
        Lookup::Found { route, .. } => Some(route),
        _ => None,
    };
    assert_eq!(hit("/v1/42"), Some(0));
    assert_eq!(hit("/v1/42/items"), Some(1));
    assert_eq!(hit("/v1/health"), Some(2));
    assert_eq!(
        hit("/a/b/c"),
        Some(4),
        "literal first segment beats a parameter"
    );
    assert_eq!(hit("/z/b/c"), Some(3));
    assert_eq!(hit("/v1"), None);
}

/// A config's routes: global ones and those of tenants `a` and `b`, from shapes.
fn tenant_config(global: &[Vec<Seg>], a: &[Vec<Seg>], b: &[Vec<Seg>]) -> String {
    let routes = |prefix: &str, shapes: &[Vec<Seg>]| {
        // One route per distinct shape (two the same cannot be told apart: a config error).
        let mut seen: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for s in shapes {
            let t = template(s);
            let key = t.replace(|c: char| c.is_ascii_digit(), "");
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            out.push(format!(
                r#"{{"name":"{prefix}{}","path":"{t}","upstream":"u"}}"#,
                out.len()
            ));
        }
        format!("[{}]", out.join(","))
    };
    format!(
        r#"{{"upstreams":{{"u":{{"servers":[{{"url":"http://127.0.0.1:1"}}]}}}},
        "routes":{},
        "tenancy":{{"quota_store":{{"backend":"memory"}}}},
        "tenants":{{"a":{{"routes":{}}},"b":{{"routes":{}}}}}}}"#,
        routes("g", global),
        routes("a", a),
        routes("b", b)
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the routes and the path, a request of tenant b (or of no tenant), looked up as
    /// the route phase does (its own table, then the global one), is never matched to a route
    /// of tenant a.
    #[test]
    fn no_tenant_reaches_another_tenants_route(
        global in prop::collection::vec(route_shape(), 0..4),
        a in prop::collection::vec(route_shape(), 1..4),
        b in prop::collection::vec(route_shape(), 0..4),
        paths in prop::collection::vec(path(), 1..20),
    ) {
        let cfg = kairos_rs::config::load_str(&tenant_config(&global, &a, &b), "t", std::path::Path::new("/tmp"));
        // Shapes that matchit cannot hold together are config errors: such cases are rejected
        // (too many rejections fail the test, so most cases do check something).
        prop_assume!(cfg.is_ok());
        let cfg = cfg.unwrap();
        let t = cfg.tenancy.as_ref().unwrap();
        let global_router = cfg.compiled_routes.as_ref().unwrap();
        let owner = |i: usize| cfg.routes[i].tenant;
        for p in &paths {
            for who in [None, Some(1usize)] {
                let own = who.map(|w| t.routers[w].lookup(None, p, "GET"));
                let found = match own {
                    Some(Lookup::Found { route, .. }) => Some(route),
                    _ => match global_router.lookup(None, p, "GET") {
                        Lookup::Found { route, .. } => Some(route),
                        _ => None,
                    },
                };
                if let Some(i) = found {
                    prop_assert!(owner(i) == who || owner(i).is_none(),
                        "{who:?} reached {} of {:?} on {p}", cfg.routes[i].name, owner(i));
                    prop_assert_ne!(owner(i), Some(0), "tenant a's route reached by {:?}", who);
                }
            }
        }
    }
}
