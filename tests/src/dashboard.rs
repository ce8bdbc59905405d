//! The Grafana dashboard's queries, ready to send to Prometheus.
//!
//! [`dashboard_queries`] extracts every panel target's `expr` (rows and nested rows
//! included) and every variable query from `deploy/grafana/podstat.json`, with Grafana's
//! variables substituted the way Grafana does it, so a test can ask a real Prometheus for
//! each one (the end-to-end test) or check that each one parses (the `promtool` test below).

use std::path::PathBuf;

use serde_json::Value;

/// The shipped dashboard.
pub fn dashboard_path() -> PathBuf {
    crate::deploy::deploy_dir().join("grafana/podstat.json")
}

/// Values Grafana gives its built-in interval variables when the caller does not.
const BUILTIN: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__range", "1h"),
];

/// Every query of the dashboard as `(what, expr)`: `what` is `"<panel title> [<refId>]"` for a
/// panel target and `"variable <name>"` for a variable, whose `label_values(sel, label)` becomes
/// `count by (label) (sel)` (data exactly when the variable has values).
///
/// `vars` gives variable values (`("pod", "busy-0")`, `("__rate_interval", "30s")`). A value is
/// escaped for where it lands: inside a regex matcher (`=~"$pod"`) its regex metacharacters are
/// escaped as Grafana does; inside any string literal, `\` and `"` are escaped; elsewhere it is
/// inserted as is. The value `$__all`, and a variable not given here, take the variable's
/// `allValue` (unescaped, as Grafana does). Built-in intervals default to `$__rate_interval`=1m,
/// `$__interval`=15s, `$__range`=1h.
///
/// # Panics
/// If the JSON does not parse, or a query uses a variable that is neither given, built in, nor
/// defined in the dashboard with an `allValue`.
pub fn dashboard_queries(json: &str, vars: &[(&str, &str)]) -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("the dashboard is not valid JSON: {e}"));
    let all_values: Vec<(String, String)> = variables(&dash)
        .filter_map(|v| {
            let name = v.get("name")?.as_str()?;
            let all = v.get("allValue")?.as_str()?;
            Some((name.to_owned(), all.to_owned()))
        })
        .collect();
    let lookup = |name: &str| -> Option<(String, bool)> {
        let given = vars
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned());
        let given = given.or_else(|| {
            BUILTIN
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        });
        let all = || {
            all_values
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, a)| (a.clone(), true))
        };
        match given {
            Some(v) if v == "$__all" => all(),
            Some(v) => Some((v, false)),
            None => all(),
        }
    };

    let mut out = Vec::new();
    for var in variables(&dash) {
        let Some(name) = var.get("name").and_then(Value::as_str) else {
            continue;
        };
        if var.get("type").and_then(Value::as_str) != Some("query") {
            continue;
        }
        let query = match var.get("query") {
            Some(Value::String(q)) => q.as_str(),
            Some(Value::Object(o)) => o.get("query").and_then(Value::as_str).unwrap_or(""),
            _ => "",
        };
        if let Some(expr) = variable_expr(query) {
            out.push((
                format!("variable {name}"),
                substitute(&expr, &lookup, &format!("variable {name}")),
            ));
        }
    }
    let mut panels = Vec::new();
    collect_panels(dash.get("panels"), &mut panels);
    for panel in panels {
        let title = panel.get("title").and_then(Value::as_str).unwrap_or("");
        for target in panel
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(expr) = target.get("expr").and_then(Value::as_str) else {
                continue;
            };
            let ref_id = target.get("refId").and_then(Value::as_str).unwrap_or("?");
            let what = format!("{title} [{ref_id}]");
            out.push((what.clone(), substitute(expr, &lookup, &what)));
        }
    }
    out
}

fn variables(dash: &Value) -> impl Iterator<Item = &Value> {
    dash.pointer("/templating/list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Panels in order, rows' nested panels included (a collapsed row keeps them inside).
fn collect_panels<'a>(panels: Option<&'a Value>, out: &mut Vec<&'a Value>) {
    for p in panels.and_then(Value::as_array).into_iter().flatten() {
        out.push(p);
        collect_panels(p.get("panels"), out);
    }
}

/// A PromQL expression that returns data exactly when the variable query has values.
fn variable_expr(query: &str) -> Option<String> {
    let q = query.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        // The label is after the last top-level comma; a selector may contain commas.
        let split = top_level_commas(inner).last().copied();
        return Some(match split {
            Some(i) => {
                let (sel, label) = (inner[..i].trim(), inner[i + 1..].trim());
                format!("count by ({label}) ({sel})")
            }
            None => format!(
                "count by ({inner}) ({{{inner}!=\"\"}})",
                inner = inner.trim()
            ),
        });
    }
    if let Some(inner) = q
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return Some(inner.trim().to_owned());
    }
    None
}

/// Byte offsets of the commas not inside braces, parentheses or strings.
fn top_level_commas(s: &str) -> Vec<usize> {
    let mut depth = 0i32;
    let mut in_str = false;
    let mut escaped = false;
    let mut out = Vec::new();
    for (i, c) in s.char_indices() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => out.push(i),
            _ => {}
        }
    }
    out
}

/// Where a substituted value lands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Context {
    Code,
    String,
    RegexString,
}

/// Replaces `$var`, `${var}`, `${var:format}` and `[[var]]`, escaping for the context.
fn substitute(expr: &str, lookup: &dyn Fn(&str) -> Option<(String, bool)>, what: &str) -> String {
    let b = expr.as_bytes();
    let mut out = String::with_capacity(expr.len());
    let mut ctx = Context::Code;
    let mut escaped = false;
    let mut i = 0;
    while i < b.len() {
        let rest = &expr[i..];
        let var = parse_var(rest);
        if let Some((name, len)) = var {
            let (value, raw) = lookup(name).unwrap_or_else(|| {
                panic!("{what}: variable ${name} is neither given nor defined with an allValue in the dashboard: {expr}")
            });
            out.push_str(&escape(&value, if raw { Context::Code } else { ctx }));
            i += len;
            continue;
        }
        let Some(c) = rest.chars().next() else { break };
        match ctx {
            Context::Code if c == '"' => {
                // A string right after =~ or !~ is a regex.
                let before = out.trim_end();
                ctx = if before.ends_with("=~") || before.ends_with("!~") {
                    Context::RegexString
                } else {
                    Context::String
                };
            }
            Context::String | Context::RegexString => match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => ctx = Context::Code,
                _ => {}
            },
            Context::Code => {}
        }
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// A variable reference at the start of `s`: (name, bytes it spans).
fn parse_var(s: &str) -> Option<(&str, usize)> {
    let ident_len = |t: &str| {
        t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(t.len())
    };
    if let Some(t) = s.strip_prefix("${") {
        let end = t.find('}')?;
        let name = t[..end].split(':').next().unwrap_or("");
        return (!name.is_empty() && ident_len(name) == name.len()).then_some((name, end + 3));
    }
    if let Some(t) = s.strip_prefix("[[") {
        let end = t.find("]]")?;
        let name = t[..end].split(':').next().unwrap_or("");
        return (!name.is_empty() && ident_len(name) == name.len()).then_some((name, end + 4));
    }
    if let Some(t) = s.strip_prefix('$') {
        let n = ident_len(t);
        return (n > 0).then_some((&t[..n], n + 1));
    }
    None
}

fn escape(value: &str, ctx: Context) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match (ctx, c) {
            (Context::Code, _) => out.push(c),
            // In a regex inside a PromQL string, a literal metacharacter is `\\c`, a literal
            // backslash `\\\\`.
            (Context::RegexString, '\\') => out.push_str(r"\\\\"),
            (Context::RegexString, '"') => out.push_str(r#"\""#),
            (Context::RegexString, c) if r".+*?()|[]{}^$/".contains(c) => {
                out.push_str(r"\\");
                out.push(c);
            }
            (_, '\\') => out.push_str(r"\\"),
            (_, '"') => out.push_str(r#"\""#),
            (_, '\n') => out.push_str(r"\n"),
            (_, c) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const MINI: &str = r#"{
      "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus"},
        {"name": "node", "type": "query", "query": {"query": "label_values(podstat_build_info, instance)"}, "includeAll": true, "allValue": ".*"},
        {"name": "pod", "type": "query", "query": "label_values(up{job=\"a,b\", x=~\"$node\"}, pod)", "allValue": ".*"},
        {"name": "ns", "type": "query", "query": "label_values(namespace)"}
      ]},
      "panels": [
        {"type": "row", "title": "collapsed", "panels": [
          {"title": "inner", "targets": [{"refId": "A", "expr": "rate(x{pod=~\"$pod\"}[$__rate_interval])"}]}
        ]},
        {"title": "forms", "targets": [
          {"refId": "A", "expr": "x{a=\"${pod}\", b=~\"[[pod]]\", c=\"$ns\"} offset $__interval"},
          {"refId": "B", "expr": "y{n=~\"${node:regex}\"}"},
          {"refId": "C"}
        ]}
      ]
    }"#;

    fn q<'a>(qs: &'a [(String, String)], what: &str) -> &'a str {
        &qs.iter()
            .find(|(w, _)| w == what)
            .unwrap_or_else(|| panic!("no query {what:?} in {qs:#?}"))
            .1
    }

    #[test]
    fn substitutes_every_form_and_escapes_for_the_context() {
        let qs = dashboard_queries(
            MINI,
            &[
                ("pod", "web.1"),
                ("ns", r#"a"b\c"#),
                ("__rate_interval", "30s"),
            ],
        );
        assert_eq!(
            q(&qs, "variable node"),
            "count by (instance) (podstat_build_info)"
        );
        assert_eq!(
            q(&qs, "variable pod"),
            r#"count by (pod) (up{job="a,b", x=~".*"})"#
        );
        assert_eq!(
            q(&qs, "variable ns"),
            r#"count by (namespace) ({namespace!=""})"#
        );
        assert_eq!(q(&qs, "inner [A]"), r#"rate(x{pod=~"web\\.1"}[30s])"#);
        assert_eq!(
            q(&qs, "forms [A]"),
            r#"x{a="web.1", b=~"web\\.1", c="a\"b\\c"} offset 15s"#
        );
        // Not given: the variable's allValue, unescaped.
        assert_eq!(q(&qs, "forms [B]"), r#"y{n=~".*"}"#);
        // A target without expr, and the datasource variable, yield nothing.
        assert_eq!(qs.len(), 6, "{qs:#?}");
    }

    #[test]
    fn all_value_and_regex_backslash() {
        let qs = dashboard_queries(MINI, &[("pod", "$__all"), ("ns", "x")]);
        assert_eq!(q(&qs, "inner [A]"), r#"rate(x{pod=~".*"}[1m])"#);
        let qs = dashboard_queries(MINI, &[("pod", r"a\b"), ("ns", "x")]);
        assert_eq!(q(&qs, "inner [A]"), r#"rate(x{pod=~"a\\\\b"}[1m])"#);
    }

    #[test]
    #[should_panic(expected = "variable $ns")]
    fn unknown_variable_panics() {
        let _ = dashboard_queries(MINI, &[]);
    }

    fn shipped(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        let path = dashboard_path();
        let json = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        dashboard_queries(&json, vars)
    }

    /// The panels the issue asks for are there, and every query is fully substituted.
    #[test]
    fn shipped_dashboard_has_the_panels_and_no_leftover_variables() {
        let qs = shipped(&[
            ("node", "10.0.0.1:9977"),
            ("namespace", "default"),
            ("pod", "busy-0"),
        ]);
        for (what, expr) in &qs {
            assert!(
                !expr.contains('$') && !expr.contains("[["),
                "{what}: {expr}"
            );
        }
        let titles: BTreeSet<&str> = qs
            .iter()
            .map(|(w, _)| w.rsplit_once(" [").map_or(w.as_str(), |(t, _)| t))
            .collect();
        for want in [
            "Containers ranked by throttled wall-clock share",
            "Containers ranked by run-queue latency p99",
            "Pods ranked by RX steering locality (same CPU)",
            "Throttled share of wall-clock time",
            "Throttle pause length",
            "Quota exhausted after",
            "Runnable threads at throttle vs limit (cores)",
            "Preemptions by cause",
            "RX steering locality",
            "variable node",
            "variable namespace",
            "variable pod",
        ] {
            assert!(titles.contains(want), "no panel {want:?} in {titles:#?}");
        }
    }

    /// Every metric the dashboard queries is exported by the agent (the metric reference,
    /// docs/metrics.md), recorded by the shipped rules, or one of the steering metrics (DESIGN.md
    /// catalogue).
    #[test]
    fn shipped_dashboard_uses_only_known_metrics() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let reference =
            std::fs::read_to_string(root.join("docs/metrics.md")).expect("docs/metrics.md");
        let rules = std::fs::read_to_string(root.join("deploy/prometheus/podstat.rules.yaml"))
            .expect("rules");
        let steering = [
            "podstat_net_rx_steering_packets_total",
            "podstat_net_flow_migrations_total",
        ];
        for (what, expr) in shipped(&[]) {
            let mut rest = expr.as_str();
            while let Some(i) = rest.find("podstat") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                rest = &rest[i + name.len()..];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                let known = reference.contains(&format!("`{base}`"))
                    || rules.contains(&format!("record: {name}\n"))
                    || steering.contains(&base);
                assert!(known, "{what}: unknown metric {name} in {expr}");
            }
        }
    }

    /// Every dashboard query is valid PromQL: one recording rule per query, `promtool check rules`.
    #[test]
    fn shipped_dashboard_queries_are_valid_promql() {
        let qs = shipped(&[("node", "n:9977"), ("namespace", "ns"), ("pod", "p")]);
        let rules: Vec<Value> = qs
            .iter()
            .enumerate()
            .map(|(i, (_, expr))| {
                serde_json::json!({"record": format!("podstat_test:dashboard_query_{i}"), "expr": expr})
            })
            .collect();
        // JSON is YAML.
        let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
        let checked = crate::rules::promtool_check_rules(&file.to_string());
        let numbered: Vec<String> = qs
            .iter()
            .enumerate()
            .map(|(i, (w, e))| format!("{i}: {w}: {e}"))
            .collect();
        if let Err(said) = checked {
            panic!(
                "promtool check rules on the dashboard's queries:\n{said}\nqueries:\n{}",
                numbered.join("\n")
            );
        }
    }
}
