//! The node commands: everything basaltctl asks of a running node through the node API
//! (apply-config, version, health, services, logs, dmesg, get, disks, reboot, shutdown,
//! ls, read, events).
//!
//! Which nodes: `--nodes` if given, else `--endpoints`, else the context's nodes, else
//! its endpoints. Every target is dialled directly (there is no proxying node), so a
//! command against several nodes is the same request sent to each; output gains a NODE
//! column (text) or becomes a map keyed by node (json/yaml).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use basalt_api::{
    ApplyConfigRequest, ApplyMode, Client, ClientError, ClientTls, Fingerprint, NdjsonStream,
    ServiceAction,
};
use basalt_config::client_config::ClientConfig;
use clap::{Args, Subcommand};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CmdResult, Failure, InvalidInput};
use crate::output::OutputFormat;

/// Where node commands connect; global, so they may come before or after the command.
#[derive(Debug, Clone, Default, Args)]
pub struct Target {
    /// The context of the client config to use (default: the file's current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The nodes to act on (comma-separated or repeated); default: the context's nodes.
    #[arg(
        short = 'n',
        long,
        global = true,
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub nodes: Vec<String>,
    /// API endpoints, used when no node is named (default: the context's endpoints).
    #[arg(
        short = 'e',
        long,
        global = true,
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// How to print the result.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct ApplyConfigArgs {
    /// The machine config to send (YAML, JSON or Ignition).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// What the node does with it.
    #[arg(long, default_value = "auto", value_parser = parse_mode, value_name = "auto|no-reboot|reboot|staged|try")]
    pub mode: ApplyMode,
    /// With --mode try: seconds before the node reverts to its previous config (default 60).
    #[arg(long, value_name = "SECONDS")]
    pub try_timeout: Option<u64>,
    /// Maintenance mode: accept whatever certificate the node presents. Lab use only.
    #[arg(long, conflicts_with = "cert_fingerprint")]
    pub insecure: bool,
    /// Maintenance mode: the SHA-256 fingerprint the node printed on its console.
    #[arg(long, value_name = "SHA256:…")]
    pub cert_fingerprint: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn parse_mode(s: &str) -> Result<ApplyMode, String> {
    s.parse()
        .map_err(|e: basalt_api::ParseEnumError| e.to_string())
}

fn parse_action(s: &str) -> Result<ServiceAction, String> {
    s.parse()
        .map_err(|e: basalt_api::ParseEnumError| e.to_string())
}

#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// The service (etcd, containerd, kubelet …).
    pub name: String,
    /// start, stop or restart; without it, show the service's status.
    #[arg(value_parser = parse_action)]
    pub action: Option<ServiceAction>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    pub service: String,
    /// Keep streaming new lines.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines of what the node kept.
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct FollowArgs {
    /// Keep streaming new lines.
    #[arg(short = 'f', long)]
    pub follow: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    /// An absolute path under /var or /etc.
    pub path: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ReadArgs {
    /// An absolute path of a file under /var or /etc.
    pub path: String,
}

#[derive(Debug, Clone, Subcommand)]
pub enum GetCommand {
    /// The active machine config, secrets redacted.
    Config(OutputArgs),
    /// Network links.
    Links(OutputArgs),
    /// Addresses on every link.
    Addresses(OutputArgs),
    /// The routing table.
    Routes(OutputArgs),
    /// DNS nameservers and search domains.
    Resolvers(OutputArgs),
}

/// The node commands, flattened into basaltctl's top level.
#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// Send a machine config to nodes (in maintenance mode: --insecure or --cert-fingerprint).
    ApplyConfig(ApplyConfigArgs),
    /// machined's version on each node.
    Version(OutputArgs),
    /// Each node's health checks.
    Health(OutputArgs),
    /// Supervised services and their state.
    Services(OutputArgs),
    /// Show one service, or start, stop or restart it.
    Service(ServiceArgs),
    /// A service's logs.
    Logs(LogsArgs),
    /// The kernel log.
    Dmesg(FollowArgs),
    /// Read node state: config, links, addresses, routes, resolvers.
    #[command(subcommand)]
    Get(GetCommand),
    /// Block devices.
    Disks(OutputArgs),
    /// Stop services gracefully and reboot.
    Reboot(OutputArgs),
    /// Stop services gracefully and power off.
    Shutdown(OutputArgs),
    /// List a directory under /var or /etc.
    Ls(PathArgs),
    /// Print a file under /var or /etc.
    Read(ReadArgs),
    /// machined's event stream.
    Events(FollowArgs),
}

/// Runs a node command on a fresh single-threaded runtime (basaltctl is otherwise sync).
pub fn run(command: NodeCommand, basaltconfig: Option<&Path>, target: &Target) -> CmdResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(command, basaltconfig, target))
}

/// A client per target node.
fn connect(basaltconfig: Option<&Path>, target: &Target) -> CmdResult<Vec<Client>> {
    let (path, config) = ClientConfig::load(basaltconfig).invalid()?;
    let (name, context) = config.context(target.context.as_deref()).invalid()?;
    let addresses = [
        &target.nodes,
        &target.endpoints,
        &context.nodes,
        &context.endpoints,
    ]
    .into_iter()
    .find(|list| !list.is_empty())
    .cloned()
    .ok_or_else(|| {
        Failure::Invalid(anyhow!(
            "no node to talk to: pass --nodes, or add nodes or endpoints to context {name:?} in {}",
            path.display()
        ))
    })?;
    let tls = ClientTls::Mutual {
        ca_pem: context.ca.clone(),
        cert_pem: context.crt.clone(),
        key_pem: context.key.clone(),
    };
    addresses
        .iter()
        .map(|a| Client::new(a, &tls).map_err(classify))
        .collect()
}

/// Refusals of the operator's input (a bad endpoint, a 400/422 answer) exit 2.
fn classify(e: ClientError) -> Failure {
    match &e {
        ClientError::InvalidEndpoint { .. } | ClientError::Credentials { .. } => {
            Failure::Invalid(e.into())
        }
        ClientError::Status {
            status: 400 | 422, ..
        } => Failure::Invalid(e.into()),
        _ => Failure::Runtime(e.into()),
    }
}

/// Runs `op` on every node, printing as each finishes; fails after all ran if any failed.
async fn each<T, F, Fut>(
    clients: &[Client],
    output: OutputFormat,
    op: F,
    table: fn(&[(String, T)]) -> String,
) -> CmdResult
where
    T: Serialize,
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    each_hinted(clients, output, op, table, None).await
}

/// [`each`], printing `transport_hint` under a failure that happened before any HTTP
/// answer (the usual sign of talking to the wrong kind of node).
async fn each_hinted<T, F, Fut>(
    clients: &[Client],
    output: OutputFormat,
    op: F,
    table: fn(&[(String, T)]) -> String,
    transport_hint: Option<&str>,
) -> CmdResult
where
    T: Serialize,
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut results = Vec::new();
    let mut failure: Option<Failure> = None;
    for client in clients {
        let node = client.endpoint().to_owned();
        match op(client.clone()).await {
            Ok(value) => results.push((node, value)),
            Err(e) => {
                eprintln!("error: {node}: {e}");
                if let Some(hint) = transport_hint.filter(|_| e.is_transport()) {
                    eprintln!("hint: {hint}");
                }
                let f = classify(e);
                // The most severe outcome wins: a runtime failure over invalid input.
                failure = match (failure, f) {
                    (Some(Failure::Runtime(a)), _) => Some(Failure::Runtime(a)),
                    (_, f) => Some(f),
                };
            }
        }
    }
    print_results(output, &results, table)?;
    match failure {
        None => Ok(()),
        Some(Failure::Invalid(_)) => Err(Failure::Invalid(anyhow!(
            "the node refused the request as invalid"
        ))),
        Some(Failure::Runtime(_)) => Err(Failure::Runtime(anyhow!(
            "the request failed on at least one node"
        ))),
    }
}

fn print_results<T: Serialize>(
    output: OutputFormat,
    results: &[(String, T)],
    table: fn(&[(String, T)]) -> String,
) -> CmdResult {
    if results.is_empty() {
        return Ok(());
    }
    match output {
        OutputFormat::Text => print!("{}", table(results)),
        OutputFormat::Json | OutputFormat::Yaml => {
            let value = if results.len() == 1 {
                serde_json::to_value(&results[0].1)?
            } else {
                serde_json::Value::Object(
                    results
                        .iter()
                        .map(|(n, v)| Ok((n.clone(), serde_json::to_value(v)?)))
                        .collect::<Result<_, serde_json::Error>>()?,
                )
            };
            if output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", serde_yaml::to_string(&value)?);
            }
        }
    }
    Ok(())
}

/// Aligns columns; the NODE column appears only when more than one node answered.
fn render(nodes: bool, header: &[&str], rows: Vec<(String, Vec<String>)>) -> String {
    let mut head: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut lines: Vec<Vec<String>> = Vec::new();
    if nodes {
        head.insert(0, "NODE".to_owned());
    }
    for (node, mut cells) in rows {
        if nodes {
            cells.insert(0, node);
        }
        lines.push(cells);
    }
    let mut widths: Vec<usize> = head.iter().map(String::len).collect();
    for line in &lines {
        for (i, cell) in line.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    for line in std::iter::once(&head).chain(lines.iter()) {
        let last = line.len().saturating_sub(1);
        for (i, cell) in line.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}   ", w = widths[i]);
            }
        }
        out.push('\n');
    }
    out
}

fn rows<T, F>(results: &[(String, Vec<T>)], cells: F) -> Vec<(String, Vec<String>)>
where
    F: Fn(&T) -> Vec<String>,
{
    let cells = &cells;
    results
        .iter()
        .flat_map(|(node, items)| items.iter().map(move |i| (node.clone(), cells(i))))
        .collect()
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit < UNITS.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

async fn run_async(
    command: NodeCommand,
    basaltconfig: Option<&Path>,
    target: &Target,
) -> CmdResult {
    if let NodeCommand::ApplyConfig(args) = &command {
        return apply_config(args, basaltconfig, target).await;
    }
    let clients = connect(basaltconfig, target)?;
    let multi = clients.len() > 1;
    match command {
        NodeCommand::ApplyConfig(_) => Ok(()),
        NodeCommand::Version(o) => {
            each(
                &clients,
                o.output,
                |c| async move { c.version().await },
                |r| {
                    render(
                        r.len() > 1,
                        &["VERSION", "API", "ARCH", "MAINTENANCE"],
                        r.iter()
                            .map(|(n, v)| {
                                (
                                    n.clone(),
                                    vec![
                                        v.version.clone(),
                                        v.api_version.clone(),
                                        v.arch.clone(),
                                        v.maintenance.to_string(),
                                    ],
                                )
                            })
                            .collect(),
                    )
                },
            )
            .await
        }
        NodeCommand::Health(o) => {
            each(
                &clients,
                o.output,
                |c| async move { c.health().await },
                |r| {
                    let rows = r
                        .iter()
                        .flat_map(|(n, h)| {
                            h.checks.iter().map(move |c| {
                                (
                                    n.clone(),
                                    vec![c.name.clone(), c.healthy.to_string(), c.message.clone()],
                                )
                            })
                        })
                        .collect();
                    render(r.len() > 1, &["CHECK", "HEALTHY", "MESSAGE"], rows)
                },
            )
            .await
        }
        NodeCommand::Services(o) => {
            each(
                &clients,
                o.output,
                |c| async move { c.services().await },
                services_table,
            )
            .await
        }
        NodeCommand::Service(args) => match args.action {
            Some(action) => {
                let name = args.name.clone();
                each(
                    &clients,
                    args.output.output,
                    move |c| {
                        let name = name.clone();
                        async move { c.service_action(&name, action).await }
                    },
                    accepted_table,
                )
                .await
            }
            None => {
                let name = args.name.clone();
                each(
                    &clients,
                    args.output.output,
                    move |c| {
                        let name = name.clone();
                        async move {
                            let all = c.services().await?;
                            let found: Vec<_> =
                                all.into_iter().filter(|s| s.name == name).collect();
                            if found.is_empty() {
                                return Err(ClientError::Status {
                                    endpoint: c.endpoint().to_owned(),
                                    status: 404,
                                    error: format!("no service named {name:?} on this node"),
                                    validation_errors: Vec::new(),
                                });
                            }
                            Ok(found)
                        }
                    },
                    services_table,
                )
                .await
            }
        },
        NodeCommand::Logs(args) => {
            let mut streams = Vec::new();
            for c in &clients {
                let s = c
                    .logs(&args.service, args.follow, args.tail)
                    .await
                    .map_err(classify)?;
                streams.push((c.endpoint().to_owned(), s));
            }
            follow_all(streams, args.output.output, multi, |l| l.message.clone()).await
        }
        NodeCommand::Dmesg(args) => {
            let mut streams = Vec::new();
            for c in &clients {
                let s = c.dmesg(args.follow).await.map_err(classify)?;
                streams.push((c.endpoint().to_owned(), s));
            }
            follow_all(streams, args.output.output, multi, |l| {
                format!(
                    "[{:>5}.{:06}] {}",
                    l.timestamp_us / 1_000_000,
                    l.timestamp_us % 1_000_000,
                    l.message
                )
            })
            .await
        }
        NodeCommand::Events(args) => {
            let mut streams = Vec::new();
            for c in &clients {
                let s = c.events(args.follow).await.map_err(classify)?;
                streams.push((c.endpoint().to_owned(), s));
            }
            follow_all(streams, args.output.output, multi, |e| {
                format!(
                    "{} {} {} {}",
                    e.sequence,
                    e.kind,
                    e.subject.as_deref().unwrap_or("-"),
                    e.message
                )
            })
            .await
        }
        NodeCommand::Get(get) => get_command(get, &clients).await,
        NodeCommand::Disks(o) => {
            each(
                &clients,
                o.output,
                |c| async move { c.disks().await },
                |r| {
                    render(
                        r.len() > 1,
                        &[
                            "DEVICE",
                            "SIZE",
                            "MODEL",
                            "SERIAL",
                            "ROTATIONAL",
                            "READ-ONLY",
                        ],
                        rows(r, |d| {
                            vec![
                                d.path.clone(),
                                human_size(d.size_bytes),
                                opt(&d.model),
                                opt(&d.serial),
                                d.rotational.to_string(),
                                d.read_only.to_string(),
                            ]
                        }),
                    )
                },
            )
            .await
        }
        NodeCommand::Reboot(o) => {
            each(
                &clients,
                o.output,
                |c| async move { c.reboot().await },
                accepted_table,
            )
            .await
        }
        NodeCommand::Shutdown(o) => {
            each(
                &clients,
                o.output,
                |c| async move { c.shutdown().await },
                accepted_table,
            )
            .await
        }
        NodeCommand::Ls(args) => {
            let path = args.path.clone();
            each(
                &clients,
                args.output.output,
                move |c| {
                    let path = path.clone();
                    async move { c.list_files(&path).await }
                },
                |r| {
                    render(
                        r.len() > 1,
                        &["MODE", "SIZE", "KIND", "NAME"],
                        rows(r, |f| {
                            vec![
                                format!("{:04o}", f.mode),
                                f.size.to_string(),
                                f.kind.to_string(),
                                f.name.clone(),
                            ]
                        }),
                    )
                },
            )
            .await
        }
        NodeCommand::Read(args) => {
            let mut stdout = std::io::stdout().lock();
            for c in &clients {
                let mut stream = c.read_file_stream(&args.path).await.map_err(classify)?;
                while let Some(chunk) = stream.next_chunk().await {
                    let chunk = chunk.map_err(classify)?;
                    stdout.write_all(&chunk).context("writing to stdout")?;
                }
            }
            Ok(())
        }
    }
}

/// The services table, for `services` and `service NAME` alike.
fn services_table(r: &[(String, Vec<basalt_api::ServiceStatus>)]) -> String {
    render(
        r.len() > 1,
        &["SERVICE", "STATE", "RESTARTS", "MESSAGE"],
        rows(r, |s| {
            vec![
                s.name.clone(),
                s.state.to_string(),
                s.restarts.to_string(),
                s.message.clone(),
            ]
        }),
    )
}

fn accepted_table(r: &[(String, basalt_api::ActionAccepted)]) -> String {
    render(
        r.len() > 1,
        &["MESSAGE"],
        r.iter()
            .map(|(n, a)| (n.clone(), vec![a.message.clone()]))
            .collect(),
    )
}

async fn get_command(get: GetCommand, clients: &[Client]) -> CmdResult {
    match get {
        GetCommand::Config(o) => {
            each(
                clients,
                o.output,
                |c| async move { c.config().await },
                |r| {
                    let mut out = String::new();
                    for (node, doc) in r {
                        if r.len() > 1 {
                            let _ = writeln!(out, "# {node}");
                        }
                        out.push_str(&doc.config);
                        if !doc.config.ends_with('\n') {
                            out.push('\n');
                        }
                    }
                    out
                },
            )
            .await
        }
        GetCommand::Links(o) => {
            each(
                clients,
                o.output,
                |c| async move { c.links().await },
                |r| {
                    render(
                        r.len() > 1,
                        &["LINK", "KIND", "MAC", "MTU", "UP", "STATE"],
                        rows(r, |l| {
                            vec![
                                l.name.clone(),
                                l.kind.clone(),
                                opt(&l.mac),
                                l.mtu.to_string(),
                                l.up.to_string(),
                                l.oper_state.clone(),
                            ]
                        }),
                    )
                },
            )
            .await
        }
        GetCommand::Addresses(o) => {
            each(
                clients,
                o.output,
                |c| async move { c.addresses().await },
                |r| {
                    render(
                        r.len() > 1,
                        &["LINK", "ADDRESS", "SCOPE"],
                        rows(r, |a| {
                            vec![a.link.clone(), a.address.clone(), a.scope.clone()]
                        }),
                    )
                },
            )
            .await
        }
        GetCommand::Routes(o) => {
            each(
                clients,
                o.output,
                |c| async move { c.routes().await },
                |r| {
                    render(
                        r.len() > 1,
                        &["DESTINATION", "GATEWAY", "LINK", "METRIC", "TABLE"],
                        rows(r, |x| {
                            vec![
                                x.destination.clone(),
                                opt(&x.gateway),
                                opt(&x.link),
                                opt(&x.metric),
                                x.table.to_string(),
                            ]
                        }),
                    )
                },
            )
            .await
        }
        GetCommand::Resolvers(o) => {
            each(
                clients,
                o.output,
                |c| async move { c.resolvers().await },
                |r| {
                    render(
                        r.len() > 1,
                        &["NAMESERVERS", "SEARCH"],
                        r.iter()
                            .map(|(n, x)| {
                                let ns: Vec<String> =
                                    x.nameservers.iter().map(ToString::to_string).collect();
                                (n.clone(), vec![ns.join(","), x.search.join(",")])
                            })
                            .collect(),
                    )
                },
            )
            .await
        }
    }
}

/// Prints NDJSON streams: text lines (prefixed by node when several), or one JSON object
/// per line / one YAML document per item.
async fn follow_all<T, F>(
    streams: Vec<(String, NdjsonStream<T>)>,
    output: OutputFormat,
    multi: bool,
    text: F,
) -> CmdResult
where
    T: DeserializeOwned + Serialize + Send + 'static,
    F: Fn(&T) -> String + Send + Sync + Copy + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for (node, mut stream) in streams {
        tasks.spawn(async move {
            while let Some(item) = stream.next().await {
                let item = item.with_context(|| format!("reading the stream from {node}"))?;
                let line = match output {
                    OutputFormat::Text => text(&item),
                    OutputFormat::Json => serde_json::to_string(&item)?,
                    OutputFormat::Yaml => format!("---\n{}", serde_yaml::to_string(&item)?),
                };
                let mut stdout = std::io::stdout().lock();
                let written = if multi && output == OutputFormat::Text {
                    writeln!(stdout, "{node}: {line}")
                } else if output == OutputFormat::Yaml {
                    write!(stdout, "{line}")
                } else {
                    writeln!(stdout, "{line}")
                };
                // A closed pipe (`| head`) ends the command quietly.
                if written.and_then(|()| stdout.flush()).is_err() {
                    return Ok(());
                }
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a stream task panicked")??;
    }
    Ok(())
}

async fn apply_config(
    args: &ApplyConfigArgs,
    basaltconfig: Option<&Path>,
    target: &Target,
) -> CmdResult {
    let document = std::fs::read_to_string(&args.file)
        .invalid_with(|| format!("reading {}", args.file.display()))?;
    let request = ApplyConfigRequest {
        config: document,
        mode: args.mode,
        try_timeout_seconds: args.try_timeout,
    };
    request
        .check()
        .map_err(|m| Failure::Invalid(anyhow!("{m}")))?;
    let maintenance_tls = if args.insecure {
        Some(ClientTls::Insecure)
    } else {
        args.cert_fingerprint
            .as_deref()
            .map(|fp| fp.parse::<Fingerprint>().map(ClientTls::Pinned))
            .transpose()
            .invalid()?
    };
    let clients = match maintenance_tls {
        Some(tls) => {
            let nodes: Vec<&String> = target.nodes.iter().chain(&target.endpoints).collect();
            if nodes.is_empty() {
                return Err(Failure::Invalid(anyhow!(
                    "a node in maintenance mode has no client config context: name it with --nodes"
                )));
            }
            nodes
                .into_iter()
                .map(|n| Client::new(n, &tls).map_err(classify))
                .collect::<CmdResult<Vec<_>>>()?
        }
        None => connect(basaltconfig, target)?,
    };
    let request = &request;
    let hint = if args.insecure || args.cert_fingerprint.is_some() {
        "--insecure and --cert-fingerprint reach nodes in maintenance mode; a configured node \
         wants the client certificate of your basaltconfig (drop both flags)"
    } else {
        "a node in maintenance mode has no certificate from your API CA: pass \
         --cert-fingerprint with the fingerprint its console shows, or --insecure in a lab"
    };
    each_hinted(
        &clients,
        args.output.output,
        |c| async move { c.apply_config(request).await },
        |r| {
            render(
                r.len() > 1,
                &["MODE", "REBOOT", "MESSAGE"],
                r.iter()
                    .map(|(n, a)| {
                        (
                            n.clone(),
                            vec![a.mode.to_string(), a.reboot.to_string(), a.message.clone()],
                        )
                    })
                    .collect(),
            )
        },
        Some(hint),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_add_node_column_only_for_several_nodes() {
        let one = render(
            false,
            &["A", "BB"],
            vec![("n1".into(), vec!["xxx".into(), "y".into()])],
        );
        assert_eq!(one, "A     BB\nxxx   y\n");
        let two = render(
            true,
            &["A"],
            vec![
                ("n1".into(), vec!["x".into()]),
                ("node2".into(), vec!["y".into()]),
            ],
        );
        assert_eq!(two, "NODE    A\nn1      x\nnode2   y\n");
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(10 * 1024 * 1024 * 1024), "10.0 GiB");
    }
}
