// The template interpreter.
//
// Scoping follows Jinja: {% if %} shares its scope, every iteration of a for loop gets a fresh
// scope on top of the enclosing one (a {% set %} inside a loop is gone after the iteration),
// and a macro body sees its own arguments over the scope it was defined in. Namespaces are the
// one way to carry values out of a loop.
#include "chat/renderer.h"

#include <unordered_map>

#include "chat/builtins.h"
#include "chat/parser.h"
#include "util/error.h"

namespace fh1::jinja {
namespace {

// Errors from inside the renderer already name their line; others get it added on the way out.
class LocatedError : public Error {
 public:
  using Error::Error;
};

struct Frame {
  std::unordered_map<std::string, Value> vars;
};
using Scope = std::vector<std::shared_ptr<Frame>>;

enum class Flow { Normal, Break, Continue };

class Renderer {
 public:
  Renderer(const RenderLimits& limits, const Map& variables) : limits_(limits) {
    auto root = std::make_shared<Frame>();
    for (auto& [k, v] : make_globals().entries) root->vars[k] = v;
    for (const auto& [k, v] : variables.entries) root->vars[k] = v;
    scope_.push_back(root);
  }

  std::string run(const Body& body) {
    std::string out;
    exec_body(body, out);
    return out;
  }

 private:
  struct DepthGuard {
    Renderer& r;
    DepthGuard(Renderer& renderer, int line) : r(renderer) {
      if (++r.depth_ > r.limits_.max_depth) {
        throw LocatedError("chat template error, line " + std::to_string(line) +
                           ": nesting or recursion deeper than " + std::to_string(r.limits_.max_depth));
      }
    }
    ~DepthGuard() { --r.depth_; }
  };

  [[noreturn]] void fail(int line, const std::string& what) const {
    throw LocatedError("chat template error, line " + std::to_string(line) + ": " + what);
  }

  void step(int line) {
    if (++steps_ > limits_.max_steps) {
      fail(line, "rendering took more than " + std::to_string(limits_.max_steps) + " steps (endless loop?)");
    }
  }

  void append(std::string& out, const std::string& text, int line) const {
    if (out.size() + text.size() > limits_.max_output_bytes) {
      fail(line, "output exceeds " + std::to_string(limits_.max_output_bytes) + " bytes");
    }
    out += text;
  }

  Value lookup(const std::string& name) const {
    for (auto it = scope_.rbegin(); it != scope_.rend(); ++it) {
      auto found = (*it)->vars.find(name);
      if (found != (*it)->vars.end()) return found->second;
    }
    return Value::undefined("'" + name + "' is undefined");
  }

  void assign(const std::string& name, Value value) { scope_.back()->vars[name] = std::move(value); }

  void assign_targets(const std::vector<std::string>& targets, const Value& value, int line) {
    if (targets.size() == 1) {
      assign(targets[0], value);
      return;
    }
    List items = iterate(value);
    if (items.size() != targets.size()) {
      fail(line, "cannot unpack " + std::to_string(items.size()) + " values into " +
                     std::to_string(targets.size()) + " names");
    }
    for (size_t i = 0; i < targets.size(); ++i) assign(targets[i], items[i]);
  }

  // ---- statements ----

  Flow exec_body(const Body& body, std::string& out) {
    for (const StmtPtr& s : body) {
      Flow flow = exec(*s, out);
      if (flow != Flow::Normal) return flow;
    }
    return Flow::Normal;
  }

  Flow exec(const Stmt& s, std::string& out) {
    step(s.line);
    DepthGuard guard(*this, s.line);
    try {
      return exec_unguarded(s, out);
    } catch (const LocatedError&) {
      throw;
    } catch (const std::exception& e) {  // fh1::Error from builtins, std::out_of_range, ...
      fail(s.line, e.what());
    }
  }

  Flow exec_unguarded(const Stmt& s, std::string& out) {
    switch (s.kind) {
      case StmtKind::Text: append(out, s.text, s.line); return Flow::Normal;
      case StmtKind::Print: append(out, to_str(eval(*s.expr)), s.line); return Flow::Normal;
      case StmtKind::If:
        for (size_t i = 0; i < s.conditions.size(); ++i) {
          if (truthy(eval(*s.conditions[i]))) return exec_body(s.bodies[i], out);
        }
        return exec_body(s.else_body, out);
      case StmtKind::For: exec_for(s, out); return Flow::Normal;
      case StmtKind::Set: exec_set(s); return Flow::Normal;
      case StmtKind::SetBlock: {
        std::string captured;
        exec_body(s.body, captured);
        assign(s.text, Value(std::move(captured)));
        return Flow::Normal;
      }
      case StmtKind::Macro: assign(s.text, make_macro(s)); return Flow::Normal;
      case StmtKind::FilterBlock: {
        std::string captured;
        exec_body(s.body, captured);
        scope_.push_back(std::make_shared<Frame>());
        assign(kFilterBlockInput, Value(std::move(captured)));
        Value result;
        try {
          result = eval(*s.expr);
        } catch (...) {
          scope_.pop_back();
          throw;
        }
        scope_.pop_back();
        append(out, to_str(result), s.line);
        return Flow::Normal;
      }
      case StmtKind::Break: return Flow::Break;
      case StmtKind::Continue: return Flow::Continue;
      case StmtKind::Scope: return exec_body(s.body, out);
    }
    return Flow::Normal;
  }

  // Pushes a frame for the lifetime of the object, so exceptions leave the scope balanced.
  struct FramePush {
    Scope& scope;
    explicit FramePush(Scope& s) : scope(s) { scope.push_back(std::make_shared<Frame>()); }
    ~FramePush() { scope.pop_back(); }
  };

  void exec_for(const Stmt& s, std::string& out) {
    Value iterable = eval(*s.expr);
    List items = iterate(iterable);
    if (s.cond) {  // "for x in xs if cond": filtered before loop.length etc. are known
      List kept;
      for (const Value& item : items) {
        step(s.line);
        FramePush frame(scope_);
        assign_targets(s.targets, item, s.line);
        if (truthy(eval(*s.cond))) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const int64_t length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      step(s.line);
      FramePush frame(scope_);
      Map loop;
      loop.set("index", Value(i + 1));
      loop.set("index0", Value(i));
      loop.set("revindex", Value(length - i));
      loop.set("revindex0", Value(length - i - 1));
      loop.set("first", Value(i == 0));
      loop.set("last", Value(i == length - 1));
      loop.set("length", Value(length));
      loop.set("depth", Value(1));
      loop.set("depth0", Value(0));
      loop.set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("there is no previous item"));
      loop.set("nextitem", i + 1 < length ? items[static_cast<size_t>(i + 1)] : Value::undefined("there is no next item"));
      loop.set("cycle", Value::function("loop.cycle", [i](CallArgs& args) {
                 if (args.positional.empty()) throw Error("loop.cycle() needs at least one argument");
                 return args.positional[static_cast<size_t>(i) % args.positional.size()];
               }));
      assign("loop", Value(std::move(loop)));
      assign_targets(s.targets, items[static_cast<size_t>(i)], s.line);
      if (exec_body(s.body, out) == Flow::Break) break;
    }
    if (items.empty()) exec_body(s.else_body, out);
  }

  void exec_set(const Stmt& s) {
    Value value = eval(*s.expr);
    if (s.attribute.empty()) {
      assign_targets(s.targets, value, s.line);
      return;
    }
    Value target = lookup(s.text);
    if (!target.is_namespace()) {
      fail(s.line, "cannot assign attribute on non-namespace object '" + s.text + "' (" + target.type_name() + ")");
    }
    if (!s.attribute.empty() && s.attribute[0] == '_') {
      fail(s.line, "underscore-prefixed namespace attribute '" + s.attribute + "' is not allowed");
    }
    target.namespace_attributes().set(s.attribute, std::move(value));
  }

  Value make_macro(const Stmt& s) {
    // Weak references: the macro is stored in one of these frames, so strong ones would make a
    // cycle that never frees.
    std::vector<std::weak_ptr<Frame>> defined_in(scope_.begin(), scope_.end());
    const Stmt* macro = &s;
    return Value::function(s.text, [this, macro, defined_in](CallArgs& args) {
      Scope closure;
      for (const auto& weak : defined_in) {
        closure.push_back(weak.lock());
        if (!closure.back()) throw Error("macro '" + macro->text + "' called after its scope ended");
      }
      if (args.positional.size() > macro->params.size()) {
        throw Error("macro '" + macro->text + "' takes not more than " + std::to_string(macro->params.size()) +
                    " argument(s)");
      }
      Scope saved = std::move(scope_);
      scope_ = std::move(closure);
      scope_.push_back(std::make_shared<Frame>());
      std::string out;
      try {
        DepthGuard guard(*this, macro->line);
        for (size_t i = 0; i < macro->params.size(); ++i) {
          const MacroParam& p = macro->params[i];
          Value v = Value::undefined("'" + p.name + "' is undefined");
          bool given = false;
          if (i < args.positional.size()) {
            v = args.positional[i];
            given = true;
          }
          for (const auto& [k, kv] : args.keyword) {
            if (k == p.name) {
              if (given) throw Error("macro '" + macro->text + "' got multiple values for argument '" + k + "'");
              v = kv;
              given = true;
            }
          }
          if (!given && p.default_value) v = eval(*p.default_value);
          assign(p.name, v);
        }
        for (const auto& [k, kv] : args.keyword) {
          bool known = false;
          for (const MacroParam& p : macro->params) known = known || p.name == k;
          if (!known) throw Error("macro '" + macro->text + "' takes no keyword argument '" + k + "'");
        }
        exec_body(macro->body, out);
      } catch (...) {
        scope_ = std::move(saved);
        throw;
      }
      scope_ = std::move(saved);
      return Value(std::move(out));
    });
  }

  // ---- expressions ----

  CallArgs eval_args(const Expr& e) {
    CallArgs args;
    for (const ExprPtr& a : e.items) args.positional.push_back(eval(*a));
    for (const auto& [k, a] : e.kwargs) args.keyword.emplace_back(k, eval(*a));
    return args;
  }

  Value eval(const Expr& e) {
    DepthGuard guard(*this, e.line);
    switch (e.kind) {
      case ExprKind::Literal: return e.value;
      case ExprKind::Name: return lookup(e.name);
      case ExprKind::List:
      case ExprKind::Tuple: {
        List items;
        for (const ExprPtr& item : e.items) items.push_back(eval(*item));
        return e.kind == ExprKind::Tuple ? Value::tuple(std::move(items)) : Value(std::move(items));
      }
      case ExprKind::Dict: {
        Map map;
        for (size_t i = 0; i < e.keys.size(); ++i) {
          Value key = eval(*e.keys[i]);
          if (!key.is_string()) fail(e.line, "dict literal keys must be strings, found " + key.type_name());
          map.set(key.as_string(), eval(*e.items[i]));
        }
        return Value(std::move(map));
      }
      case ExprKind::GetAttr: return get_attribute(eval(*e.object), e.name);
      case ExprKind::GetItem: {
        Value object = eval(*e.object);
        return get_item(object, eval(*e.then));
      }
      case ExprKind::Slice: {
        Value object = eval(*e.object);
        Value start = e.cond ? eval(*e.cond) : Value::none();
        Value stop = e.then ? eval(*e.then) : Value::none();
        Value stride = e.otherwise ? eval(*e.otherwise) : Value::none();
        return slice(object, start, stop, stride);
      }
      case ExprKind::Call: {
        Value callee = eval(*e.object);
        CallArgs args = eval_args(e);
        if (callee.is_undefined()) throw_undefined(callee);
        if (!callee.is_function()) throw Error("'" + callee.type_name() + "' object is not callable");
        return callee.as_function().call(args);
      }
      case ExprKind::Filter: {
        Value input = eval(*e.object);
        return apply_filter(e.name, input, eval_args(e));
      }
      case ExprKind::Test: {
        Value input = eval(*e.object);
        bool result = apply_test(e.name, input, eval_args(e));
        return Value(result != e.negated);
      }
      case ExprKind::Unary: {
        Value v = eval(*e.object);
        if (e.name == "not") return Value(!truthy(v));
        if (e.name == "-") return unary_minus(v);
        if (v.is_undefined()) throw_undefined(v);
        if (!v.is_number()) throw Error("bad operand type for unary +: '" + v.type_name() + "'");
        return v.is_bool() ? Value(v.as_int()) : v;
      }
      case ExprKind::Binary: {
        Value left = eval(*e.object);
        if (e.name == "and") return truthy(left) ? eval(*e.then) : left;
        if (e.name == "or") return truthy(left) ? left : eval(*e.then);
        return binary_op(e.name, left, eval(*e.then), limits_.max_output_bytes);
      }
      case ExprKind::Compare: {
        Value left = eval(*e.object);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.keys[i]);
          const std::string& op = e.ops[i];
          bool ok;
          if (op == "==") ok = equal(left, right);
          else if (op == "!=") ok = !equal(left, right);
          else if (op == "<") ok = less(left, right);
          else if (op == "<=") ok = !less(right, left);
          else if (op == ">") ok = less(right, left);
          else if (op == ">=") ok = !less(left, right);
          else if (op == "in") ok = contains(right, left);
          else ok = !contains(right, left);
          if (!ok) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case ExprKind::Concat: {
        std::string out;
        for (const ExprPtr& item : e.items) append(out, to_str(eval(*item)), e.line);
        return Value(std::move(out));
      }
      case ExprKind::Conditional:
        if (truthy(eval(*e.cond))) return eval(*e.then);
        return e.otherwise ? eval(*e.otherwise) : Value::undefined("the inline if expression was false and has no else");
    }
    return Value();
  }

  const RenderLimits& limits_;
  Scope scope_;
  int depth_ = 0;
  uint64_t steps_ = 0;
};

void check_expr_names(const Expr* e) {
  if (!e) return;
  if (e->kind == ExprKind::Filter && !is_known_filter(e->name)) {
    throw Error("chat template error, line " + std::to_string(e->line) + ": no filter named '" + e->name +
                "' (not supported by this chat template engine)");
  }
  if (e->kind == ExprKind::Test && !is_known_test(e->name)) {
    throw Error("chat template error, line " + std::to_string(e->line) + ": no test named '" + e->name +
                "' (not supported by this chat template engine)");
  }
  for (const Expr* child : {e->object.get(), e->cond.get(), e->then.get(), e->otherwise.get()}) check_expr_names(child);
  for (const ExprPtr& c : e->items) check_expr_names(c.get());
  for (const ExprPtr& c : e->keys) check_expr_names(c.get());
  for (const auto& kw : e->kwargs) check_expr_names(kw.second.get());
}

}  // namespace

void check_names(const Body& body) {
  for (const StmtPtr& s : body) {
    check_expr_names(s->expr.get());
    check_expr_names(s->cond.get());
    for (const ExprPtr& c : s->conditions) check_expr_names(c.get());
    for (const Body& b : s->bodies) check_names(b);
    for (const MacroParam& p : s->params) check_expr_names(p.default_value.get());
    check_names(s->body);
    check_names(s->else_body);
  }
}

std::string render_template(const Body& body, const Map& variables, const RenderLimits& limits) {
  Renderer renderer(limits, variables);
  try {
    return renderer.run(body);
  } catch (const LocatedError& e) {
    throw Error(e.what());  // callers see a plain fh1::Error
  }
}

}  // namespace fh1::jinja
