//! How the gateway shows its routes to operators: the JSON of `GET /_kairos/routes` and the
//! table and JSON of `kairos-rs routes list`, one rendering for both.

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Renders the routes of a config as a table or JSON.
pub fn render_routes(cfg: &crate::config::Config, format: Format) -> String {
    // Values that came from the environment are shown as written (`${HOST}`), never expanded.
    let shown = |i: usize, field: &str, value: &str| {
        cfg.shown(&format!("{}.{field}", cfg.route_json_path(i)), value)
            .to_string()
    };
    let rows: Vec<[Option<String>; 6]> = cfg
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let methods = if r.methods == crate::config::model::MethodSet::ALL {
                "*".to_string()
            } else {
                r.methods.names().join(",")
            };
            [
                Some(r.name.clone()),
                Some(methods),
                r.host.as_deref().map(|h| shown(i, "host", h)),
                Some(shown(i, "path", &r.path)),
                cfg.upstreams.get(r.upstream).map(|u| u.name.clone()),
                r.rewrite.as_ref().map(|w| shown(i, "rewrite", &w.template)),
            ]
        })
        .collect();
    match format {
        Format::Json => {
            let items: Vec<_> = rows
                .iter()
                .zip(&cfg.routes)
                .map(|(r, rc)| {
                    serde_json::json!({
                        "name": r[0], "methods": r[1], "host": r[2], "path": r[3],
                        "upstream": r[4].clone().unwrap_or_default(), "rewrite": r[5],
                        "timeout": crate::config::units::format_duration(rc.timeout),
                        "tenant": rc.tenant
                            .and_then(|t| cfg.tenancy.as_ref()?.tenants.get(t))
                            .map(|t| t.id.as_str()),
                    })
                })
                .collect();
            let mut s = serde_json::to_string_pretty(&items).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Table => {
            let rows: Vec<[String; 6]> = rows
                .into_iter()
                .map(|r| {
                    let [name, methods, host, path, upstream, rewrite] = r;
                    [
                        name.unwrap_or_default(),
                        methods.unwrap_or_default(),
                        host.unwrap_or_else(|| "*".into()),
                        path.unwrap_or_default(),
                        upstream.unwrap_or_default(),
                        rewrite.unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            render_table(
                ["NAME", "METHODS", "HOST", "PATH", "UPSTREAM", "REWRITE"],
                &rows,
            )
        }
    }
}

/// Rows under a header, columns padded to their widest cell.
pub fn render_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let header = header.map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
