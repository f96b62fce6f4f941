//! `tamis check --emit nginx|caddy`: the TLS terminator's snippet for the running config's
//! prefixes, so a route added to tamis cannot fall through to the site because the front end
//! was not told. `deploy/nginx/tamis.conf` and `deploy/caddy/Caddyfile` are this output for
//! `config/tamis.toml` (a test keeps them identical).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{Config, RouteConfig, DEFAULT_TRANSPARENCY_PATH};

/// The front ends tamis writes a snippet for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontEnd {
    Nginx,
    Caddy,
}

impl FrontEnd {
    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FrontEnd::Nginx => "nginx",
            FrontEnd::Caddy => "caddy",
        }
    }
}

/// Why no snippet can be written.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error(
        "--emit {0}: the config has no server.listen, the plain HTTP listener a front end \
         proxies to"
    )]
    NoListener(&'static str),
}

/// One path the front end sends to tamis.
struct Location {
    path: String,
    /// An exact path (the transparency page), not a prefix.
    exact: bool,
    /// What it is, for the comment above it.
    what: String,
    /// An analytics route's `max_body`: its tracking URLs stay out of the access log, and a
    /// larger body is refused.
    analytics_body: Option<usize>,
}

/// The snippet for `front`, proxying every prefix of `config` (and its transparency page) to
/// its `server.listen`.
pub fn emit(config: &Config, front: FrontEnd) -> Result<String, EmitError> {
    let listen = config
        .server
        .listen
        .map(reachable)
        .ok_or(EmitError::NoListener(front.as_str()))?;
    let locations = locations(config);
    let source = config.source.display().to_string();
    Ok(match front {
        FrontEnd::Nginx => nginx(&source, listen, &locations),
        FrontEnd::Caddy => caddy(&source, listen, &locations),
    })
}

/// An address the front end can connect to: a wildcard listener is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// Every route prefix in config order (a fonts route's files prefix too, unless it lies under
/// its CSS prefix), then the transparency page and its probe.
fn locations(config: &Config) -> Vec<Location> {
    let mut out = Vec::new();
    for r in &config.routes {
        let files_apart = r
            .font_files
            .as_ref()
            .filter(|f| !f.prefix.starts_with(&r.prefix));
        out.push(Location {
            path: r.prefix.clone(),
            exact: false,
            what: describe(r),
            analytics_body: r.analytics.as_ref().map(|a| a.max_body),
        });
        if let Some(f) = files_apart {
            out.push(Location {
                path: f.prefix.clone(),
                exact: false,
                what: format!(
                    "route \"{}\" (fonts): its font files, from {}",
                    r.name,
                    f.upstream.authority.host()
                ),
                analytics_body: None,
            });
        }
    }
    let (path, probe) = config
        .transparency
        .as_ref()
        .map_or((DEFAULT_TRANSPARENCY_PATH.to_owned(), false), |t| {
            (t.path.clone(), t.probe)
        });
    if config.transparency.is_some() {
        out.push(Location {
            path: path.clone(),
            exact: true,
            what: "The transparency page (JSON with ?format=json): link it from the privacy \
                   policy."
                .into(),
            analytics_body: None,
        });
        out.push(Location {
            path: format!("{path}/probe"),
            exact: true,
            what: if probe {
                "The dry-run probe ([transparency] probe = true).".into()
            } else {
                "The dry-run probe, when [transparency] probe = true (tamis answers 404 \
                 otherwise)."
                    .into()
            },
            analytics_body: None,
        });
    }
    out
}

/// What a route serves, in a few words (no upstream path or query: a tile template's query may
/// hold an API key).
fn describe(r: &RouteConfig) -> String {
    let host = r.upstream.authority.host();
    let (name, kind) = (&r.name, r.kind.as_str());
    match (&r.font_files, &r.analytics) {
        (Some(f), _) => format!(
            "route \"{name}\" ({kind}): CSS from {host}, font files ({}) from {}",
            f.prefix,
            f.upstream.authority.host()
        ),
        (None, Some(_)) => format!("route \"{name}\" ({kind}): tracking hits for {host}, scrubbed"),
        (None, None) => format!("route \"{name}\" ({kind}): {host}"),
    }
}

/// `64k`, `1m`: a size as nginx reads it.
fn nginx_size(bytes: usize) -> String {
    if bytes % (1024 * 1024) == 0 {
        format!("{}m", bytes / (1024 * 1024))
    } else if bytes % 1024 == 0 {
        format!("{}k", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// `64 KiB`: a size as people read it.
fn human_size(bytes: usize) -> String {
    if bytes % (1024 * 1024) == 0 {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

/// What both front ends' comments say of the client address (`how` names the header line).
fn client_address(front: &str, header_line: &str) -> String {
    format!(
        "# CLIENT ADDRESS. tamis gets the visitor's address, and only that: {header_line}
#
# tamis reads the header only from a peer in its server.trusted_proxies, which the shipped
# config sets to this machine ([\"127.0.0.1\", \"::1\"]; list this {front}'s address there if it runs
# elsewhere), and uses the address for its own purposes only: per-visitor rate limits (tiles
# routes limit each client to 10/s, burst 200, by default) and, if you turn them on, the
# truncated address of log.client_ip or of an EU analytics route's client_ip. It removes it,
# like every client-address header, from every upstream request, and logs no address unless
# log.client_ip = \"truncated\".
#"
    )
}

fn nginx(source: &str, listen: SocketAddr, locations: &[Location]) -> String {
    let mut o = String::with_capacity(8192);
    let _ = write!(
        o,
        "# tamis behind nginx, the site's TLS terminator, on the site's own domain.
#
# Written by `tamis check --emit nginx` for the routes of
#   {source}
# After changing them, write it again (`tamis check --emit nginx >
# /etc/nginx/snippets/tamis.conf && nginx -t && systemctl reload nginx`), so that no tamis
# prefix falls through to the site.
#
# Include this file inside the site's existing HTTPS server block (it must be included in the
# server block, not in the http block: it sets a variable and adds locations):
#
#   server {{
#       listen 443 ssl http2;
#       server_name site.example;
#       ...
#       include /etc/nginx/snippets/tamis.conf;
#   }}
#
# tamis listens on {listen} (server.listen). `^~` makes these prefixes win over the
# site's regex locations (a `location ~* \\.(png|css|js)$` for its own static files would
# otherwise swallow /tiles/osm/1/2/3.png).
# `proxy_pass` has no URI part on purpose: the request path reaches tamis exactly as the
# browser sent it (not decoded or merged by nginx), and tamis confines it itself.
#
{}
# To send tamis no address at all, change the `set` line below to
#   set $tamis_client_address \"\";
# Then every visitor has this nginx's address and they all share ONE per-client rate-limit
# bucket: on a busy site map tiles start failing with 429. Set rate_limit = \"off\" on the routes
# if you do. (The same happens if tamis does not trust this nginx: it ignores the header, since
# anyone else could forge it.)

    set $tamis_client_address $remote_addr;

# Keep-alive to tamis (optional): in the http context add
#   upstream tamis {{ server {listen}; keepalive 16; }}
# and replace every `proxy_pass http://{listen};` below by `proxy_pass http://tamis;`.
",
        client_address(
            "nginx",
            "X-Forwarded-For is set to the
# address of the connection nginx accepted ($remote_addr; with the realip module, the address it
# resolved). It REPLACES the header: a value the visitor sent is dropped, not appended to.
# X-Real-IP and Forwarded are sent empty, so nginx drops them (and any such header the visitor
# sent). Each location sets its own proxy_set_header lines, so nginx inherits none from the
# server or http level (an X-Forwarded-For set there for other applications,
# `$proxy_add_x_forwarded_for` say, does not leak in). Do not add client-address headers any
# other way, and do not `include proxy_params` (Debian's appends to X-Forwarded-For and adds
# X-Real-IP)."
        )
    );
    for l in locations {
        let _ = write!(
            o,
            "\n    # {}\n    location {}{} {{\n",
            l.what,
            if l.exact { "= " } else { "^~ " },
            l.path
        );
        if let Some(max) = l.analytics_body {
            let _ = write!(
                o,
                "        # The tracking URL carries the visitor's analytics ids and page: nginx's access log would
        # keep them next to the visitor's address, before tamis scrubs anything.
        access_log off;
        # tamis answers 413 above the route's max_body ({}).
        client_max_body_size {};
",
                human_size(max),
                nginx_size(max)
            );
        }
        let _ = write!(
            o,
            "        proxy_pass http://{listen};
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header Connection \"\";
        proxy_set_header X-Forwarded-For $tamis_client_address;
        proxy_set_header X-Real-IP \"\";
        proxy_set_header Forwarded \"\";
    }}
"
        );
    }
    o
}

fn caddy(source: &str, listen: SocketAddr, locations: &[Location]) -> String {
    let mut o = String::with_capacity(8192);
    let _ = write!(
        o,
        "# tamis behind Caddy, the site's TLS terminator, on the site's own domain.
#
# Written by `tamis check --emit caddy` for the routes of
#   {source}
# After changing them, write it again (`tamis check --emit caddy`, merge it, `caddy validate`,
# `systemctl reload caddy`), so that no tamis prefix falls through to the site.
#
# Merge the `(tamis)` snippet and the `handle` blocks into the site's existing Caddyfile (with
# the site's own name for site.example); the last `handle` stands for the site's own content.
# Caddy gets the certificate itself.
# tamis listens on {listen} (server.listen). Paths reach tamis as the browser sent them
# (reverse_proxy without a rewrite), and tamis confines them itself.
#
{}
# To send tamis no address at all, change the X-Forwarded-For line to
#   header_up -X-Forwarded-For
# Then every visitor has this Caddy's address and they all share ONE per-client rate-limit
# bucket: on a busy site map tiles start failing with 429. Set rate_limit = \"off\" on the routes
# if you do. (The same happens if tamis does not trust this Caddy: it ignores the header, since
# anyone else could forge it.)
#
# Check it:  caddy validate --adapter caddyfile --config Caddyfile

(tamis) {{
\treverse_proxy {listen} {{
\t\theader_up X-Forwarded-For {{remote_host}}
\t\theader_up -X-Forwarded-Proto
\t\theader_up -X-Forwarded-Host
\t\theader_up -X-Real-IP
\t\theader_up -Forwarded
\t}}
}}

site.example {{
",
        client_address(
            "Caddy",
            "`header_up X-Forwarded-For
# {remote_host}` sets the header to the address of the connection Caddy accepted. It REPLACES
# the header: a value the visitor sent is dropped, not appended to. Caddy warns that this line
# is \"Unnecessary\", and without trusted_proxies in Caddy's own config it is (Caddy then ignores
# the visitor's value anyway); it stays because with them Caddy would append to the visitor's
# value. The other header_up lines remove X-Forwarded-Proto and X-Forwarded-Host, which Caddy
# adds by default, and X-Real-IP and Forwarded (and any such header the visitor sent)."
        )
    );
    for l in locations {
        let _ = writeln!(o, "\t# {}", l.what);
        if let Some(max) = l.analytics_body {
            let _ = write!(
                o,
                "\t# If this site has a `log` directive, keep {} out of it: the tracking URL carries
\t# the visitor's analytics ids and page, before tamis scrubs anything.
\t# tamis itself answers 413 above the route's max_body ({}). (Caddy 2.6's
\t# request_body max_size would cut the body off mid-stream and answer 502 instead.)
",
                l.path,
                human_size(max)
            );
        }
        let matcher = if l.exact {
            l.path.clone()
        } else {
            format!("{}*", l.path)
        };
        let _ = write!(o, "\thandle {matcher} {{\n\t\timport tamis\n\t}}\n");
    }
    o.push_str(
        "
\t# The site's own content.
\thandle {
\t\troot * /var/www/site.example
\t\tfile_server
\t}
}
",
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("t.toml")).unwrap()
    }

    const ROUTES: &str = "[[route]]\nname = \"fonts\"\nkind = \"fonts\"\nprefix = \"/f/\"\n\
        upstream = \"https://fonts.googleapis.com/\"\nfiles_prefix = \"/ff/\"\n\
        files_upstream = \"https://fonts.gstatic.com/\"\n\n\
        [[route]]\nname = \"maps\"\nkind = \"tiles\"\nprefix = \"/m/\"\n\
        upstream = \"https://tiles.example/{z}/{x}/{y}.png?key=SECRETKEY\"\n\
        referer = \"https://shop.example/\"\n\
        user_agent = \"tamis (+https://shop.example/contact)\"\n\n\
        [[route]]\nname = \"stats\"\nkind = \"plausible\"\nprefix = \"/p/\"\n\
        upstream = \"https://plausible.io/\"\nmax_body = 131072\n";

    #[test]
    fn every_prefix_goes_to_the_listener_and_no_upstream_secret_is_written() {
        let c = config(&format!(
            "[server]\nlisten = \"0.0.0.0:9090\"\n[transparency]\nprobe = true\n{ROUTES}"
        ));
        let n = emit(&c, FrontEnd::Nginx).unwrap();
        for want in [
            "    location ^~ /f/ {\n",
            "    location ^~ /ff/ {\n",
            "    location ^~ /m/ {\n",
            "    location ^~ /p/ {\n",
            "    location = /.well-known/tamis {\n",
            "    location = /.well-known/tamis/probe {\n",
            "        client_max_body_size 128k;\n",
            "        proxy_pass http://127.0.0.1:9090;\n",
            "    # The dry-run probe ([transparency] probe = true).\n",
        ] {
            assert!(n.contains(want), "{want}\n{n}");
        }
        assert_eq!(n.matches("access_log off;").count(), 1, "{n}");
        let k = emit(&c, FrontEnd::Caddy).unwrap();
        for want in [
            "\thandle /f/* {\n\t\timport tamis\n\t}\n",
            "\thandle /ff/* {\n",
            "\thandle /m/* {\n",
            "\thandle /p/* {\n",
            "\thandle /.well-known/tamis {\n",
            "\treverse_proxy 127.0.0.1:9090 {\n",
        ] {
            assert!(k.contains(want), "{want}\n{k}");
        }
        for text in [&n, &k] {
            assert!(!text.contains("SECRETKEY"), "{text}");
        }
    }

    #[test]
    fn without_a_plain_listener_or_a_transparency_page() {
        let c = config(&format!(
            "[server]\nlisten = \"[::]:8080\"\n[transparency]\nenabled = false\n{ROUTES}"
        ));
        let n = emit(&c, FrontEnd::Nginx).unwrap();
        assert!(n.contains("proxy_pass http://[::1]:8080;"), "{n}");
        assert!(!n.contains("location = /.well-known/tamis"), "{n}");
        let mut c = c;
        c.server.listen = None;
        let e = emit(&c, FrontEnd::Caddy).unwrap_err().to_string();
        assert!(e.contains("server.listen"), "{e}");
    }
}
