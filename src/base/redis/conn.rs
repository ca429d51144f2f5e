//! One connection as the Redis users see it: a multiplexed connection to one node (a single
//! Redis, or the master Sentinel named) or a Cluster connection that routes each command by
//! its keys' slot and follows MOVED/ASK. Both are cheap to clone and shared by every call of
//! one worker. A command that walks one node's keys (`SCAN`) is sent to each master in turn.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

#[derive(Clone)]
pub enum Conn {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A node a command can be sent to on its own (`SCAN` walks one node's keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAddr {
    /// The node this connection talks to (a single Redis, the Sentinel's master).
    This,
    /// A Cluster node.
    At(String, u16),
}

impl Conn {
    /// The nodes that hold keys: this one, or every master of a Cluster (as `CLUSTER NODES`
    /// lists them, failed ones left out).
    pub async fn masters(&mut self) -> redis::RedisResult<Vec<NodeAddr>> {
        let Conn::Cluster(c) = self else {
            return Ok(vec![NodeAddr::This]);
        };
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(c).await?;
        Ok(parse_masters(&nodes))
    }

    /// `cmd` on node `at` alone.
    pub async fn query_on<T: redis::FromRedisValue>(
        &mut self,
        at: &NodeAddr,
        cmd: &Cmd,
    ) -> redis::RedisResult<T> {
        match (self, at) {
            (Conn::Cluster(c), NodeAddr::At(host, port)) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let v = c.route_command(cmd.clone(), routing).await?;
                Ok(redis::from_redis_value(v)?)
            }
            (c, _) => cmd.query_async(c).await,
        }
    }
}

/// The masters in a `CLUSTER NODES` answer: `<id> <ip:port@cport[,host]> <flags> ...`, flags
/// holding `master` and not `fail`.
fn parse_masters(nodes: &str) -> Vec<NodeAddr> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_, addr, flags) = (f.next()?, f.next()?, f.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.contains(&"fail") {
                return None;
            }
            let addr = addr.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some(NodeAddr::At(host.to_string(), port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_of_cluster_nodes() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,host.example master - 0 1 2 connected 5461-10922
c3 127.0.0.1:7002@17002 slave a1 0 1 3 connected
d4 [::1]:7003@17003 master,fail - 0 1 4 disconnected
e5 [::1]:7004@17004 master - 0 1 5 connected 10923-16383
";
        assert_eq!(
            parse_masters(nodes),
            vec![
                NodeAddr::At("127.0.0.1".into(), 7000),
                NodeAddr::At("127.0.0.1".into(), 7001),
                NodeAddr::At("::1".into(), 7004),
            ]
        );
    }
}
