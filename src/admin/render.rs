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
    let rows: Vec<[String; 6]> = cfg
        .routes
        .iter()
        .map(|r| {
            let methods = if r.methods == crate::config::model::MethodSet::ALL {
                "*".to_string()
            } else {
                r.methods.names().join(",")
            };
            [
                r.name.clone(),
                methods,
                r.host.clone().unwrap_or_else(|| "*".into()),
                r.path.clone(),
                cfg.upstreams
                    .get(r.upstream)
                    .map(|u| u.name.clone())
                    .unwrap_or_default(),
                r.rewrite
                    .as_ref()
                    .map(|w| w.template.clone())
                    .unwrap_or_else(|| "-".into()),
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
                        "name": r[0], "methods": r[1], "host": rc.host, "path": r[3],
                        "upstream": r[4], "rewrite": rc.rewrite.as_ref().map(|w| &w.template),
                        "timeout": crate::config::units::format_duration(rc.timeout),
                    })
                })
                .collect();
            let mut s = serde_json::to_string_pretty(&items).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Table => render_table(
            ["NAME", "METHODS", "HOST", "PATH", "UPSTREAM", "REWRITE"],
            &rows,
        ),
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
