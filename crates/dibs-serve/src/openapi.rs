//! The OpenAPI document as served: what the handlers' annotations generate
//! ([`crate::http::ApiDoc`]), completed with what annotations cannot say.
//!
//! * The answers every operation of a kind can give: 401 and 403 (a missing, unknown,
//!   revoked or expired token, or a role that may not), 503 (the store or the broker is
//!   unavailable), 400 for a bad query or header, and 408, 413 and 415 for a body that
//!   arrives too slowly, too large, or not as JSON.
//! * Each field's real bounds, taken from the constants the handlers and the engine
//!   check against, so the document cannot drift from the checks.
//! * The names this deployment knows (accelerators, providers, locations, roles) as
//!   enums, so a client or a fuzzer that generates from the document sends names the
//!   service accepts; these come from the engine's catalog at the moment of the call.
//!
//! What no JSON Schema can say stays in descriptions and is answered with 422: rules
//! between fields (a block that divides the GPUs, `deliver_by` after the start, a region of
//! the named provider) and a contract file's TOML.

use dibs_core::names::Names;
use dibs_core::request::{MAX_DURATION_HOURS, MAX_REQUEST_LIST_LEN};
use dibs_core::types::{GpuCount, Price, WorkloadClass};
use serde_json::{Value, json};

use crate::app::{AppState, MAX_KEY_LEN, read_engine};
use crate::broker::{MAX_HOURS_AHEAD, MAX_LIST};
use crate::http::{MAX_CONTRACT_FILES, MAX_EVENT_NAME_CHARS};

/// `GET /v1/openapi.json`: the document with the names the engine knows now.
pub async fn serve(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<AppState>>,
) -> axum::Json<Value> {
    let names = read_engine(&state, |view| view.engine.names().clone()).await;
    axum::Json(document(names.as_ref()))
}

/// The document, completed; `names` (the engine's, when it answered) adds the enums.
pub fn document(names: Option<&Names>) -> Value {
    use utoipa::OpenApi;
    let mut doc =
        serde_json::to_value(crate::http::ApiDoc::openapi()).expect("the OpenAPI document serializes");
    add_common_answers(&mut doc);
    add_bounds(&mut doc);
    if let Some(names) = names {
        add_names(&mut doc, names);
    }
    doc
}

fn add_common_answers(doc: &mut Value) {
    let error = json!({ "$ref": "#/components/schemas/ApiError" });
    let answer = |description: &str| json!({ "description": description, "content": { "application/json": { "schema": error.clone() } } });
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for operations in paths.values_mut() {
        let Some(operations) = operations.as_object_mut() else { continue };
        for operation in operations.values_mut() {
            let secured = operation.get("security").is_some();
            let has_body = operation.get("requestBody").is_some();
            let has_query_or_header = operation
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query" || p["in"] == "header"));
            let Some(responses) = operation["responses"].as_object_mut() else { continue };
            let mut add = |status: &str, description: &str| {
                responses.entry(status).or_insert_with(|| answer(description));
            };
            if secured {
                add("401", "No token, or one that is unknown, revoked or expired");
                add("403", "The token's role may not do this");
                add("503", "The store or the broker is unavailable (or this replica is a standby)");
            }
            if has_query_or_header {
                add("400", "A query parameter or header is wrong; `field` names it");
            }
            if has_body {
                add("408", "The body did not arrive in time");
                add("413", "The body is larger than the service takes");
                add("415", "The body is not `application/json`");
                add("422", "A field is wrong; `field` names it");
            }
        }
    }
}

/// Merges `constraints` into property `property` of component schema `schema`.
fn constrain(doc: &mut Value, schema: &str, property: &str, constraints: Value) {
    let target = doc
        .pointer_mut(&format!("/components/schemas/{schema}/properties/{property}"))
        .and_then(Value::as_object_mut);
    debug_assert!(target.is_some(), "{schema}.{property} is not in the document");
    if let (Some(target), Some(constraints)) = (target, constraints.as_object()) {
        for (key, value) in constraints {
            target.insert(key.clone(), value.clone());
        }
    }
}

/// Merges `constraints` into the parameter `name` of every operation that takes it.
fn constrain_parameter(doc: &mut Value, path: &str, name: &str, constraints: Value) {
    let operations =
        doc.pointer_mut(&format!("/paths/{}", path.replace('/', "~1"))).and_then(Value::as_object_mut);
    debug_assert!(operations.is_some(), "{path} is not in the document");
    let Some(operations) = operations else { return };
    for operation in operations.values_mut() {
        let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) else {
            continue;
        };
        for parameter in parameters.iter_mut().filter(|p| p["name"] == name) {
            if let (Some(schema), Some(constraints)) =
                (parameter["schema"].as_object_mut(), constraints.as_object())
            {
                for (key, value) in constraints {
                    schema.insert(key.clone(), value.clone());
                }
            }
        }
    }
}

fn add_bounds(doc: &mut Value) {
    let list = json!({ "maxItems": MAX_REQUEST_LIST_LEN, "uniqueItems": true });
    let s = "SubmitBody";
    constrain(
        doc,
        s,
        "accelerators",
        json!({ "minItems": 1, "maxItems": MAX_REQUEST_LIST_LEN, "uniqueItems": true }),
    );
    constrain(doc, s, "regions", list.clone());
    constrain(doc, s, "providers", list.clone());
    constrain(doc, s, "exclude_providers", list);
    constrain(doc, s, "gpus", json!({ "minimum": 1, "maximum": GpuCount::MAX }));
    constrain(doc, s, "block", json!({ "minimum": 1, "maximum": GpuCount::MAX }));
    constrain(doc, s, "duration_hours", json!({ "minimum": 1, "maximum": MAX_DURATION_HOURS }));
    constrain(doc, s, "deliver_within_hours", json!({ "minimum": 0, "maximum": MAX_HOURS_AHEAD }));
    constrain(doc, s, "max_price", json!({ "minimum": 0.0, "maximum": Price::MAX }));
    let workloads: Vec<&str> = WorkloadClass::ALL.iter().map(|w| w.as_str()).collect();
    constrain(doc, s, "workload", json!({ "enum": workloads }));
    constrain(doc, s, "spot", json!({ "enum": ["never", "allow", "only", null] }));
    constrain(doc, s, "objective", json!({ "enum": ["cost", "time", null] }));
    constrain(doc, s, "preference", json!({ "pattern": dibs_core::request::PREFERENCE_PATTERN }));

    constrain(
        doc,
        "EventBody",
        "name",
        json!({ "pattern": format!("^[A-Za-z0-9_.-]{{1,{MAX_EVENT_NAME_CHARS}}}$") }),
    );
    constrain(doc, "ContractFiles", "files", json!({ "minItems": 1, "maxItems": MAX_CONTRACT_FILES }));

    // A pull provider's answer (`http::ProviderAnswerBody`).
    constrain(doc, "HolderAccept", "answer", json!({ "enum": ["accept"] }));
    constrain(doc, "HolderAccept", "gpus_per_node", json!({ "minimum": 1, "maximum": GpuCount::MAX }));
    constrain(doc, "HolderDecline", "answer", json!({ "enum": ["decline"] }));
    let o = "OfferBody";
    constrain(doc, o, "gpus_per_node", json!({ "minimum": 1, "maximum": GpuCount::MAX }));
    constrain(doc, o, "node_price", json!({ "minimum": 0.0, "maximum": dibs_core::types::NodePrice::MAX }));
    constrain(doc, o, "kind", json!({ "enum": ["on-demand", "reserved", "spot"] }));
    // No `maxItems`: the engine's bound on offers per answer lies beyond what 64 KiB of body
    // can hold, so the body limit (413) is what bounds the list.

    let limit = |max: usize| json!({ "minimum": 1, "maximum": max });
    constrain_parameter(doc, "/v1/requests", "limit", limit(MAX_LIST));
    constrain_parameter(doc, "/v1/allocations", "limit", limit(MAX_LIST));
    constrain_parameter(doc, "/v1/ledger", "limit", limit(dibs_store::MAX_PAGE));
    constrain_parameter(doc, "/v1/requests", "status", json!({ "enum": crate::view::STATUSES }));
    let key = json!({ "minLength": 1, "maxLength": MAX_KEY_LEN, "pattern": "^[!-~]+$" });
    constrain_parameter(doc, "/v1/requests", "Idempotency-Key", key.clone());
    constrain_parameter(doc, "/v1/incidents", "Idempotency-Key", key);
}

fn add_names(doc: &mut Value, names: &Names) {
    let accelerators: Vec<&str> = names.accelerators().map(|a| a.as_str()).collect();
    let providers: Vec<&str> = names.providers().map(|p| p.as_str()).collect();
    let locations = names.locations();
    let items = |values: Value| json!({ "items": { "type": "string", "enum": values } });
    let s = "SubmitBody";
    constrain(doc, s, "accelerators", items(json!(accelerators)));
    constrain(doc, s, "providers", items(json!(providers)));
    constrain(doc, s, "exclude_providers", items(json!(providers)));
    constrain(doc, s, "regions", items(json!(locations)));
    constrain(doc, "IncidentBody", "provider", json!({ "enum": providers }));
    // A bare region, or one qualified by its provider (the handler takes both).
    let mut regions: Vec<String> = names.regions().map(|r| r.to_string()).collect();
    regions.extend(names.locations().into_iter().filter(|l| !l.ends_with("/*")));
    let mut nullable_regions = json!(regions);
    nullable_regions.as_array_mut().expect("an array").push(Value::Null);
    constrain(doc, "IncidentBody", "region", json!({ "enum": nullable_regions }));
    // A provider's answer names what the engine knows; the broker checks the rest (the
    // provider's own name and regions, what the request asked for).
    let bare_regions: Vec<&str> = names.regions().map(|r| r.as_str()).collect();
    for schema in ["OfferBody", "HolderAccept"] {
        constrain(doc, schema, "accelerator", json!({ "enum": accelerators }));
        constrain(doc, schema, "region", json!({ "enum": bare_regions }));
    }
    constrain(doc, "OfferBody", "provider", json!({ "enum": providers }));
    let mut roles = vec!["admin".to_owned(), "requester".to_owned(), "auditor".to_owned()];
    roles.extend(providers.iter().map(|p| format!("provider:{p}")));
    constrain(doc, "TokenBody", "role", json!({ "enum": roles }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The property names of component schema `name`.
    fn properties(doc: &Value, name: &str) -> Vec<String> {
        let mut names: Vec<String> =
            doc["components"]["schemas"][name]["properties"].as_object().unwrap().keys().cloned().collect();
        names.sort();
        names
    }

    /// The keys of `value` serialized, every optional field given.
    fn keys(value: impl serde::Serialize) -> Vec<String> {
        let mut names: Vec<String> =
            serde_json::to_value(value).unwrap().as_object().unwrap().keys().cloned().collect();
        names.sort();
        names
    }

    #[test]
    fn the_answer_schema_names_the_fields_the_engine_reads() {
        // The documented answer is its own type (`http::ProviderAnswerBody`); the handler
        // parses the engine's. A field added to one and not the other fails here.
        let doc = document(None);
        let mut offer = dibs_core::catalog::bundled_catalog().offers[0].clone();
        offer.zone = Some("us-east-1a".into());
        offer.valid_until = Some(dibs_core::types::Timestamp::from_unix(0));
        offer.bills_from_delivery = false;
        offer.price_source = Some("catalog".into());
        assert_eq!(properties(&doc, "OfferBody"), keys(&offer));
        let accept = dibs_core::engine::HolderAnswer::Accept {
            gpus: 8,
            region: offer.region.clone(),
            accelerator: offer.accelerator.clone(),
            instance_type: offer.instance_type.clone(),
            gpus_per_node: offer.gpus_per_node,
            lead_time_hours: 1,
        };
        assert_eq!(properties(&doc, "HolderAccept"), keys(&accept));
        assert_eq!(properties(&doc, "HolderDecline"), keys(dibs_core::engine::HolderAnswer::Decline));
        assert_eq!(properties(&doc, "ProviderQuotes"), ["offers"]);
        // The body is one of the three, not an untyped object.
        let body = &doc["paths"]["/v1/provider/requests/{id}/answer"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(body["$ref"], "#/components/schemas/ProviderAnswerBody", "{body}");
        assert_eq!(
            doc["components"]["schemas"]["ProviderAnswerBody"]["oneOf"].as_array().map(Vec::len),
            Some(3)
        );
    }

    #[test]
    fn every_constrained_field_exists_in_the_generated_document() {
        // `constrain` on a misspelled field would add a property the API does not have.
        let names = Names::from_offers(&dibs_core::catalog::bundled_catalog().offers);
        let plain = serde_json::to_value({
            use utoipa::OpenApi;
            crate::http::ApiDoc::openapi()
        })
        .unwrap();
        let done = document(Some(&names));
        for (name, schema) in done["components"]["schemas"].as_object().unwrap() {
            let before = plain["components"]["schemas"][name]["properties"].as_object();
            let after = schema["properties"].as_object();
            assert_eq!(
                before.map(|p| p.keys().collect::<Vec<_>>()),
                after.map(|p| p.keys().collect::<Vec<_>>()),
                "{name}"
            );
        }
        let submit = &done["components"]["schemas"]["SubmitBody"]["properties"];
        assert!(submit["accelerators"]["items"]["enum"].as_array().unwrap().iter().any(|a| a == "H100"));
        assert_eq!(submit["gpus"]["maximum"], GpuCount::MAX);
        let answers = &done["paths"]["/v1/requests"]["post"]["responses"];
        for status in ["201", "401", "403", "408", "413", "415", "422", "503", "400"] {
            assert!(answers[status].is_object(), "POST /v1/requests lacks {status}: {answers}");
        }
        assert!(done["paths"]["/v1/health"]["get"]["responses"]["401"].is_null(), "health needs no token");
    }
}
