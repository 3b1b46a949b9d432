//! Every parameter of the published OpenAPI documents is in its real
//! place: a path parameter is a `{name}` of its path's template, every
//! `{name}` of a template is declared as a path parameter, and no
//! operation declares one parameter twice. A query parameter declared as
//! a path parameter makes the document invalid (validators refuse it and
//! client generators drop the operation).

use std::collections::BTreeSet;

use serde_json::Value;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `{name}`s of a path template.
fn template_names(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_owned)
        .collect()
}

/// Mistakes of one document, one line each.
fn mistakes(document: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let Some(paths) = document["paths"].as_object() else {
        return vec!["no paths".into()];
    };
    for (path, item) in paths {
        let template = template_names(path);
        let shared: Vec<&Value> = item["parameters"]
            .as_array()
            .map(|p| p.iter().collect())
            .unwrap_or_default();
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let own: Vec<&Value> = operation["parameters"]
                .as_array()
                .map(|p| p.iter().collect())
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            let mut in_path = BTreeSet::new();
            for parameter in shared.iter().chain(&own) {
                let name = parameter["name"].as_str().unwrap_or_default();
                let place = parameter["in"].as_str().unwrap_or_default();
                if !seen.insert((name.to_owned(), place.to_owned())) {
                    found.push(format!("{method} {path}: `{name}` ({place}) twice"));
                }
                if place == "path" {
                    in_path.insert(name.to_owned());
                    if !template.contains(name) {
                        found.push(format!(
                            "{method} {path}: `{name}` is declared in the path but is not in its template"
                        ));
                    }
                }
            }
            for name in template.difference(&in_path) {
                found.push(format!(
                    "{method} {path}: `{{{name}}}` has no path parameter"
                ));
            }
        }
    }
    found
}

#[test]
fn every_parameter_is_in_its_real_place() {
    let mut all = Vec::new();
    for (name, json) in retail_platform::openapi_documents() {
        let document: Value = serde_json::from_str(&json).expect("a JSON document");
        all.extend(
            mistakes(&document)
                .into_iter()
                .map(|m| format!("{name}: {m}")),
        );
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

#[test]
fn the_check_finds_a_query_parameter_declared_in_the_path() {
    let document = serde_json::json!({ "paths": {
        "/v1/availability/{sku}": { "get": { "parameters": [
            { "name": "sku", "in": "path" },
            { "name": "locations", "in": "path" }
        ]}},
        "/v1/reservations/{reservation_id}": { "get": { "parameters": [] } }
    }});
    let found = mistakes(&document);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("`locations` is declared in the path"));
    assert!(found[1].contains("`{reservation_id}` has no path parameter"));
}
