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

/// Adds the bearer security scheme.
pub fn finish(mut doc: OpenApi) -> OpenApi {
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
pub fn docs(doc: OpenApi) -> axum::Router {
    SwaggerUi::new("/api/v1/docs")
        .url(DOCUMENT_PATH, doc)
        .into()
}
