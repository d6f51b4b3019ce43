// The parsed form of a template: expressions and statements, each remembering its source line
// so that render-time errors can point at it.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/value.h"

namespace fh1::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

enum class ExprKind {
  Literal,      // value
  Name,         // name
  List,         // items
  Tuple,        // items
  Dict,         // keys/items pairs
  GetAttr,      // object.name
  GetItem,      // object[index]
  Slice,        // object[start:stop:step], missing parts are null
  Call,         // callee(args, kwargs)
  Filter,       // object | name(args, kwargs)
  Test,         // object is [not] name(args)
  Unary,        // op object ("not", "-", "+")
  Binary,       // left op right (arithmetic, "and", "or", "in", "not in")
  Compare,      // left op right [op right ...] (Python comparison chains)
  Concat,       // items joined with ~
  Conditional,  // then if cond else otherwise (otherwise may be null: Undefined)
};

struct Expr {
  ExprKind kind;
  int line = 0;
  Value value;                   // Literal
  std::string name;              // Name, GetAttr, Filter, Test; operator for Unary/Binary
  ExprPtr object, cond, then, otherwise;  // object: operand / callee; Slice uses cond/then/otherwise
  std::vector<ExprPtr> items;    // List/Tuple/Call args/Filter args/Test args/Concat; Dict values
  std::vector<ExprPtr> keys;     // Dict keys; Compare right-hand operands
  std::vector<std::string> ops;  // Compare operators
  std::vector<std::pair<std::string, ExprPtr>> kwargs;  // Call/Filter keyword arguments
  bool negated = false;          // Test: "is not"

  Expr(ExprKind k, int l) : kind(k), line(l) {}
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class StmtKind {
  Text,         // text
  Print,        // {{ expr }}
  If,           // conditions[i] -> bodies[i], optional else_body
  For,          // for targets in expr [if cond]: body, else_body
  Set,          // set targets = expr; or set ns.attr = expr (attr_object non-empty)
  SetBlock,     // {% set name %}body{% endset %}
  Macro,        // name(params = defaults): body
  FilterBlock,  // {% filter f %}body{% endfilter %}, the filter chain in expr (object is a hole)
  Break,
  Continue,
  Scope,        // a body rendered as is ({% generation %} from transformers)
};

struct MacroParam {
  std::string name;
  ExprPtr default_value;  // null: required
};

struct Stmt {
  StmtKind kind;
  int line = 0;
  std::string text;                 // Text; SetBlock/Macro name; Set: namespace variable
  std::string attribute;            // Set: ns.<attribute>
  std::vector<std::string> targets;  // For/Set: names (several means tuple unpacking)
  ExprPtr expr;                     // Print/For iterable/Set value/FilterBlock chain
  ExprPtr cond;                     // For filter
  std::vector<ExprPtr> conditions;  // If
  std::vector<Body> bodies;         // If branches
  Body body, else_body;
  std::vector<MacroParam> params;   // Macro

  Stmt(StmtKind k, int l) : kind(k), line(l) {}
};

}  // namespace fh1::jinja
