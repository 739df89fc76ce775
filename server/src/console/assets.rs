//! The console's static files, embedded in the binary at build time: the page, its
//! style sheet and its JavaScript modules (plain ES modules: no framework, no bundler,
//! nothing to build). Served with `no-cache`, so a new binary's page is picked up at
//! once.

use hyper::{Method, Request, Response, StatusCode};

use super::{whole, Body};

/// Path, content type, content.
const FILES: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("assets/index.html")),
    ("/index.html", HTML, include_str!("assets/index.html")),
    ("/console.css", CSS, include_str!("assets/console.css")),
    ("/js/api.js", JS, include_str!("assets/js/api.js")),
    ("/js/format.js", JS, include_str!("assets/js/format.js")),
    ("/js/main.js", JS, include_str!("assets/js/main.js")),
    ("/js/handlers.js", JS, include_str!("assets/js/handlers.js")),
    ("/js/logs.js", JS, include_str!("assets/js/logs.js")),
    ("/js/stats.js", JS, include_str!("assets/js/stats.js")),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// One static file for GET and HEAD; 404 for an unknown path, 405 for other methods.
pub(super) fn answer<B>(request: &Request<B>) -> Response<Body> {
    let path = request.uri().path();
    let Some((_, content_type, content)) = FILES.iter().find(|(p, _, _)| *p == path) else {
        return whole(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("no such page: {path}\n"),
        );
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = whole(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n",
        );
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return response;
    }
    let mut response = whole(StatusCode::OK, content_type, *content);
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        let served = |path: &str| FILES.iter().any(|(p, _, _)| *p == path);
        for (_, _, content) in FILES {
            for line in content.lines() {
                // `import ... from "./x.js"` in modules, `src="/js/x.js"` in the page.
                let target = line
                    .split_once(" from \"./")
                    .map(|(_, rest)| format!("/js/{}", rest.split('"').next().unwrap_or("")))
                    .or_else(|| {
                        line.split_once("src=\"")
                            .map(|(_, rest)| rest.split('"').next().unwrap_or("").to_owned())
                    });
                if let Some(target) = target {
                    assert!(served(&target), "{target} is imported but not served");
                }
            }
        }
    }
}
