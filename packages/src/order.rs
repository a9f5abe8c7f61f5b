//! Start order from `requires`: every agent after the agents it requires;
//! a cycle is refused with its members named (`a -> b -> c -> a`).
//! Requirements outside the given set are someone else's and are ignored.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Cycle;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Visiting,
    Done,
}

/// Ids in start order (ties broken by id), or the first cycle found.
pub fn start_order(agents: &BTreeMap<String, BTreeSet<String>>) -> Result<Vec<String>, Cycle> {
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    let mut order = Vec::with_capacity(agents.len());
    let mut stack: Vec<&str> = Vec::new();
    for id in agents.keys() {
        visit(id, agents, &mut marks, &mut stack, &mut order)?;
    }
    Ok(order)
}

fn visit<'a>(
    id: &'a str,
    agents: &'a BTreeMap<String, BTreeSet<String>>,
    marks: &mut BTreeMap<&'a str, Mark>,
    stack: &mut Vec<&'a str>,
    order: &mut Vec<String>,
) -> Result<(), Cycle> {
    match marks.get(id) {
        Some(Mark::Done) => return Ok(()),
        Some(Mark::Visiting) => {
            let start = stack.iter().position(|s| *s == id).unwrap_or(0);
            let mut cycle: Vec<String> = stack[start..].iter().map(|s| (*s).to_owned()).collect();
            cycle.push(id.to_owned());
            return Err(Cycle { cycle });
        }
        None => {}
    }
    let Some(requires) = agents.get(id) else {
        return Ok(()); // outside the set
    };
    marks.insert(id, Mark::Visiting);
    stack.push(id);
    for required in requires {
        visit(required, agents, marks, stack, order)?;
    }
    stack.pop();
    marks.insert(id, Mark::Done);
    order.push(id.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        edges
            .iter()
            .map(|(id, req)| {
                (
                    (*id).to_owned(),
                    req.iter().map(|r| (*r).to_owned()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_chain_of_three_starts_from_its_end() {
        let g = graph(&[
            ("api", &["cache"]),
            ("cache", &["db"]),
            ("db", &[]),
            ("lone", &["external"]),
        ]);
        assert_eq!(
            start_order(&g).expect("acyclic"),
            ["db", "cache", "api", "lone"]
        );
    }

    #[test]
    fn cycles_are_named_in_order() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &[])]);
        let err = start_order(&g).expect_err("cycle");
        assert_eq!(err.cycle, ["a", "b", "c", "a"]);
        assert_eq!(
            err.to_string(),
            "`requires` forms a cycle: a -> b -> c -> a"
        );
        let g = graph(&[("x", &["y"]), ("y", &["y"])]);
        assert_eq!(start_order(&g).expect_err("self loop").cycle, ["y", "y"]);
    }
}
