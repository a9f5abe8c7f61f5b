//! The OpenAPI 3 document (generated from the routes) and the offline
//! Swagger UI page at `/api/v1/docs` (assets vendored in the binary).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder, ServerBuilder};
use utoipa_swagger_ui::SwaggerUi;

/// Path of the JSON document.
pub const DOCUMENT_PATH: &str = "/api/v1/openapi.json";

/// Document skeleton: info, servers; paths come from the routes.
pub fn base() -> OpenApi {
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("OPMAS management API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Run and watch fleets of agents. Every operation needs `Authorization: Bearer <token>` \
                     (a JWT or an API token); the security scope of each operation names the least role \
                     it needs (viewer < operator < admin). Errors are `{\"error\": {\"code\", \"message\", \"details\"}}`.",
                ))
                .build(),
        )
        .servers(Some(vec![ServerBuilder::new().url("/").build()]))
        .build()
}

/// Answers every operation can give besides its own (the error format).
const COMMON: &[(&str, &str)] = &[
    ("400", "Malformed request (bad JSON, bad path)"),
    ("401", "Missing, invalid, expired or revoked token"),
    ("403", "The token's role may not do this"),
    ("422", "A value is invalid: `details.field` names it"),
    ("429", "Rate limited: retry after `Retry-After` seconds"),
    (
        "503",
        "Postgres or NATS unreachable: retry after `Retry-After` seconds",
    ),
];

/// Extra answers of operations with a request body.
const WITH_BODY: &[(&str, &str)] = &[
    ("413", "The body is larger than the server accepts"),
    ("415", "The body is not `application/json`"),
];

/// Pattern of agent ids in paths (the exact rules are in `AgentId`).
const AGENT_ID_PATTERN: &str = "^[a-z][a-z0-9-]{0,62}$";

/// The document as served: the generated one plus the bearer scheme, the
/// error answers every operation shares and the agent id pattern.
pub fn finish(doc: OpenApi) -> serde_json::Value {
    let doc = with_security(doc);
    let mut value = serde_json::to_value(&doc).unwrap_or_default();
    let error = serde_json::json!({
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    });
    if let Some(paths) = value.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                let has_body = op.get("requestBody").is_some();
                if let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) {
                    for param in params {
                        if param["in"] == "path" && param["name"] == "id" {
                            param["schema"]["pattern"] = AGENT_ID_PATTERN.into();
                        }
                    }
                }
                let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut())
                else {
                    continue;
                };
                let extra = COMMON.iter().chain(if has_body { WITH_BODY } else { &[] });
                for (code, description) in extra {
                    responses.entry(code.to_string()).or_insert_with(|| {
                        let mut r = error.clone();
                        r["description"] = (*description).into();
                        r
                    });
                }
            }
        }
    }
    value
}

/// Adds the bearer security scheme.
fn with_security(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT or opm_ API token")
                .build(),
        ),
    );
    doc
}

/// `/api/v1/openapi.json` and `/api/v1/docs`.
pub fn docs(doc: serde_json::Value) -> axum::Router {
    SwaggerUi::new("/api/v1/docs")
        .external_url_unchecked(DOCUMENT_PATH, doc)
        .into()
}
